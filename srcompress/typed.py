"""The typed-config base every component shares, and the one canonical serialisation hashes are taken over.

It lives at the package face (not in ``infra/``) because ``models/`` owns the knobs of its own functions
(degradation parameters, the tiny-teacher recipe) and must not import infrastructure (docs/architecture.md §2).
Pure pydantic + stdlib.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the one serialisation that hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins; lists are replaced, not concatenated. A mapping with
    ``_replace: true`` replaces the base's mapping instead of merging into it (a preset that ``extends`` another
    can drop a section's settings that do not apply to it)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and value.get("_replace") is True:
            out[key] = {k: copy.deepcopy(v) for k, v in value.items() if k != "_replace"}
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class StrictModel(BaseModel):
    """Base for every component config: frozen, no unknown keys, validated defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON form; identical configs hash identically across machines."""
        return canonical_hash(self.model_dump(mode="json"))
