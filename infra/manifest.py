"""Manifests: the small frozen record every step returns (docs/architecture.md §1).

One object for four jobs: it is the Prefect task result, the input of the next step's cache key, what MLflow
records (dataset input with *our* digest, run tags), and the audit trail. It carries URIs and digests, never
tensors or images.

``digest`` identifies content (sha256 of the object, or a digest over shard digests); ``cache_key`` identifies
the computation that produced it: hash(step, step-config hash, input digests, code version).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from srcompress.infra.codever import code_version  # noqa: F401  (re-exported: one place derives code versions)
from srcompress.infra.config import canonical_hash


class Manifest(BaseModel):
    """What a step made, where, from what, and with which code and config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="What this is: pairs, pairs-shard, quarantine-report, teacher, latents, …")
    step: str = Field(description="The DAG step that produced it.")
    uri: str = Field(description="Where it lives: file://… or s3://… (an index object for sharded outputs).")
    digest: str = Field(description="sha256 of the content (or of the ordered shard digests).")
    config_hash: str = Field(description="sha256 of the step's resolved config.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input name → digest.")
    code_version: str = Field(description="Hash of the source files the step depends on (+ package version).")
    counts: dict[str, int] = Field(default_factory=dict, description="Items produced / skipped / quarantined, …")
    extra: dict[str, Any] = Field(default_factory=dict, description="Small step-specific facts (conventions, shapes).")
    cache_key: str = Field(description="hash(step, config_hash, inputs, code_version): equal keys ⇒ reusable result.")
    run_id: str | None = Field(None, description="MLflow run that produced it (first producer, kept on cache hits).")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        return cls.model_validate_json(text)

    @property
    def short(self) -> str:
        return f"{self.kind}:{self.digest[:12]}"


def cache_key(step: str, config_hash: str, inputs: Mapping[str, str], code_version: str) -> str:
    """The one cache-key formula used by every step (and by the Prefect task cache)."""
    return canonical_hash({"step": step, "config": config_hash, "inputs": dict(sorted(inputs.items())),
                           "code": code_version})


def digest_of_digests(digests: Iterable[str]) -> str:
    """Order-sensitive digest of a list of content digests (shards of one output)."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode())
        h.update(b"\n")
    return h.hexdigest()
