"""Typed-config plumbing shared by every component.

Each component owns one pydantic model (``StoreConfig``, ``TrackingConfig``, ``DegradeConfig``, …) built on
``StrictModel``: unknown keys are rejected, values are validated, and every field carries a docstring
(``Field(description=…)``) so ``srcompress config show`` can explain itself. The root model lives in
``srcompress.config``; this module only knows how to load YAML, merge overrides, hash and report errors.

    srcompress config show --config configs/tiny.yaml
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from srcompress.typed import StrictModel, canonical_hash, canonical_json, deep_merge  # noqa: F401  (re-exported)

T = TypeVar("T", bound=BaseModel)

# Presets ship in the repository's configs/ folder; `--config tiny` is shorthand for configs/tiny.yaml.
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"  # repo: <root>/configs; wheel: srcompress/configs


class ConfigError(ValueError):
    """A configuration could not be loaded or validated. The message names the offending key."""


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a preset in configs/ (``tiny`` → configs/tiny.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", str(name_or_path)) and preset.is_file():
        return preset
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise ConfigError(f"config file not found: {name_or_path!s} (presets: {', '.join(known) or 'none'})")


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config; a top-level ``extends: <preset or path>`` is merged underneath it."""
    path = resolve_config_path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config 'extends' cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is not None:
        base_path = Path(parent)
        if not base_path.is_absolute() and (path.parent / base_path).is_file():
            base_path = path.parent / base_path
        data = deep_merge(load_yaml(base_path if base_path.is_file() else parent, (*_seen, path)), data)
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["degrade.crop_size=64", "run.seed=3"]`` → nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the full dotted key, e.g. ``degrade.crop_size: …``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("__root__",))
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "<root>")
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling; `srcompress config show` lists valid keys)")
        elif not loc:  # a cross-field rule: its message names the keys; the input is the whole config
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate(model: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


def field_docs(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Dotted key → field description, recursing into nested component configs."""
    docs: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        docs[key] = field.description or ""
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            docs.update(field_docs(ann, key + "."))
    return docs


_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|session_key)", re.I)
_URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/\s?#]+)@", re.I)
# Query / fragment parameters that carry credentials: AWS SigV4 presigned parts, OAuth-style tokens, passwords.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&#;](?:[a-z0-9_.-]*(?:token|signature|credential|secret|password|passwd|api[_-]?key|"
    r"access[_-]?key|session|auth|sig|key))=)(?P<value>[^&#\s'\"]*)", re.I)


def redact_text(text: str) -> str:
    """Credentials removed from any text (URIs inside log lines and error messages included): ``user:pass@``
    becomes ``***@``, and the value of every credential-like query parameter becomes ``***``."""
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}***", text)


def redact(value: Any, key: str = "") -> Any:
    """The one redaction policy (docs/architecture.md §6): secret-looking keys are masked whole; every string
    is passed through ``redact_text``. Applied at every exit: flow parameters, MLflow params/tags/artifacts,
    logs, error messages, summaries."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return redact_text(value)
    return value


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
