"""The MLflow model registry: register a student as a pyfunc model version, move aliases, read lineage back.

    v = register_student(tracking_uri, run_id, "srcompress-tiny", folder, model_config, tags)   # → version
    decision = promote(tracking_uri, "srcompress-tiny", v, gate)                              # aliases
    info = resolve("models:/srcompress-tiny@champion", tracking_uri)                          # version + tags
    folder = download_student(info, dest)                                                     # its safetensors folder
    move_alias(tracking_uri, "srcompress-tiny", "champion", "3", how="manual", reason="hotfix")  # + history
    rollback_alias(tracking_uri, "srcompress-tiny", "champion")                                  # back to the last

Every alias move that srcompress makes (the register step's gate, ``srcompress models promote|rollback``) is
appended to the registered model's tag ``srcompress.alias_history.<alias>`` (JSON: version, previous version,
how, reason, time, user), and the version gets ``alias.<alias>.set_by``; rollback replays that history.

Everything is read from MLflow alone (works against a remote tracking server): a version's tags name every
upstream digest and run (``lineage.*``), so ``srcompress lineage`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import os
import re
import time
from pathlib import Path
from typing import Any

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@contextlib.contextmanager
def _fluent(uri: str):
    """MLflow's fluent API for one call: ``set_tracking_uri`` also writes MLFLOW_TRACKING_URI (and the registry
    variable) into os.environ, which every later run and subprocess would inherit — restore both after."""
    import mlflow

    from mlflow.tracking._model_registry import utils as registry_utils

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking = mlflow.get_tracking_uri() if saved["MLFLOW_TRACKING_URI"] else None
    # the process-wide registry URI outlives the block too: every later MlflowClient(tracking_uri) without an
    # explicit registry would otherwise read this block's registry, whatever its own tracking URI
    old_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_registry_uri(old_registry)  # None unsets it (the registry follows each client's tracking URI)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        mlflow.set_tracking_uri(old_tracking) if old_tracking else None
        for k, v in saved.items():  # set_tracking_uri above rewrote the variable again
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_student(tracking_uri: str, run_id: str, name: str, folder: Path, model_config: dict,
                     tags: dict[str, str], description: str = "") -> str:
    """Log the student folder as a pyfunc model in ``run_id`` and register it; returns the version number.

    The model carries the inference code and its pinned requirements (``infra/serving.py``), a signature and an
    input example, so ``mlflow models serve`` installs and runs it with its default environment manager."""
    import tempfile

    from srcompress.infra.serving import serving_bundle, student_signature

    signature, example = student_signature()
    with tempfile.TemporaryDirectory(prefix="srcompress-serving-") as tmp, _fluent(tracking_uri) as mlflow, \
            mlflow.start_run(run_id=run_id):  # resumes the step's run
        code, requirements = serving_bundle(Path(tmp))
        info = mlflow.pyfunc.log_model(name="student", python_model=str(PYFUNC_CODE),
                                       artifacts={"student": str(folder)}, model_config=model_config,
                                       code_paths=[str(code)], pip_requirements=requirements,
                                       signature=signature, input_example=example)
    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description="srcompress students (one-step diffusion SR)")
    except Exception:  # exists (or created concurrently)
        pass
    # model_id: a tracking server validates a models:/m-… source against it (sqlite clients do not check)
    mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, description=description,
                                     model_id=info.model_id)
    deadline = time.monotonic() + 120
    while mv.status != "READY" and time.monotonic() < deadline:  # file/sqlite stores are READY at once
        time.sleep(0.5)
        mv = client.get_model_version(name, mv.version)
    return str(mv.version)


def find_version(tracking_uri: str, name: str, tag: str, value: str) -> str | None:
    """An existing version of ``name`` whose tag ``tag`` equals ``value`` (the register step's idempotence)."""
    client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    hits = sorted((int(v.version) for v in versions if v.tags.get(tag) == value), reverse=True)
    return str(hits[0]) if hits else None


def version_info(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    client = _client(tracking_uri)
    mv = client.get_model_version(name, version)
    aliases = list(getattr(mv, "aliases", []) or [])
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags),
            "aliases": aliases, "status": mv.status}


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def set_version_tags(tracking_uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    client = _client(tracking_uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def resolve(ref: str, tracking_uri: str) -> dict[str, Any]:
    """``models:/name@alias`` | ``models:/name/version`` → version info; a run id → that run's lineage tags."""
    m = _MODEL_URI.match(ref)
    if m:
        name = m.group("name")
        version = m.group("version") or alias_version(tracking_uri, name, m.group("alias"))
        if version is None:
            raise LookupError(f"{ref}: no version has alias {m.group('alias')!r}")
        return version_info(tracking_uri, name, version)
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        run = _client(tracking_uri).get_run(ref)
        return {"run_id": ref, "tags": dict(run.data.tags), "name": None, "version": None, "aliases": []}
    raise ValueError(f"not a model URI (models:/name@alias, models:/name/version) or run id: {ref!r}")


def download_student(info: dict[str, Any], tracking_uri: str, dest: Path) -> Path:
    """The registered version's student folder (the pyfunc's ``student`` artifact), downloaded once."""
    dest.mkdir(parents=True, exist_ok=True)
    with _fluent(tracking_uri) as mlflow:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info['name']}/{info['version']}",
                                                    dst_path=str(dest), tracking_uri=tracking_uri)
    found = [p.parent for p in Path(local).rglob("student.json")]
    if not found:
        raise FileNotFoundError(f"models:/{info['name']}/{info['version']}: no student folder in its artifacts")
    return found[0]


HISTORY_TAG = "srcompress.alias_history.{alias}"
# MLflow caps tag values (5000 characters on the sqlalchemy stores): the oldest moves are dropped first.
_HISTORY_CHARS = 4000


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out as asked (unknown version, nothing to roll back to)."""


def alias_history(tracking_uri: str, name: str, alias: str) -> list[dict[str, str]]:
    """The moves of ``alias`` recorded by srcompress, oldest first."""
    model = _client(tracking_uri).get_registered_model(name)
    raw = dict(model.tags or {}).get(HISTORY_TAG.format(alias=alias))
    return json.loads(raw) if raw else []


def move_alias(tracking_uri: str, name: str, alias: str, version: str, how: str,
               reason: str) -> dict[str, str] | None:
    """Point ``alias`` at ``version`` and record the move (``how``: gate, manual, rollback, candidate).
    None when the alias already points there (a rerun of the register step records nothing new)."""
    client = _client(tracking_uri)
    try:
        client.get_model_version(name, version)
    except Exception as exc:  # before anything moves
        raise RegistryError(f"{name} has no version {version!r} ({type(exc).__name__})") from exc
    previous = alias_version(tracking_uri, name, alias)
    if previous == str(version):
        return None
    client.set_registered_model_alias(name, alias, version)
    event = {"version": str(version), "from": previous or "", "how": how, "reason": reason[:300],
             "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "by": _user()}
    history = alias_history(tracking_uri, name, alias) + [event]
    while len(history) > 1 and len(json.dumps(history)) > _HISTORY_CHARS:
        history.pop(0)
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))
    client.set_model_version_tag(name, version, f"alias.{alias}.set_by", f"{how} at {event['at']}: {reason[:200]}")
    return event


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


def rollback_target(history: list[dict[str, str]]) -> tuple[str | None, str | None]:
    """(current, previous) versions of an alias from its recorded moves: promotions push, rollbacks pop, so a
    second rollback goes one further back rather than undoing the first."""
    stack: list[str] = []
    for e in history:
        if e["how"] == "rollback":
            if stack:
                stack.pop()
        elif not stack or stack[-1] != e["version"]:
            stack.append(e["version"])
    current = stack[-1] if stack else None
    return current, (stack[-2] if len(stack) > 1 else None)


def rollback_alias(tracking_uri: str, name: str, alias: str, reason: str = "") -> dict[str, str]:
    """Move ``alias`` back to the version it pointed at before its current one (from the recorded history)."""
    history = alias_history(tracking_uri, name, alias)
    recorded, previous = rollback_target(history)
    now = alias_version(tracking_uri, name, alias)
    if now is None:
        raise RegistryError(f"{name}@{alias} is not set: nothing to roll back")
    if recorded != now:
        raise RegistryError(f"{name}@{alias} points at version {now}, but srcompress last moved it to "
                            f"{recorded or 'nothing'} (moved elsewhere, e.g. in the MLflow UI): use "
                            f"'srcompress models promote {name} VERSION' to choose the version")
    if previous is None:
        raise RegistryError(f"{name}@{alias}: version {now} is the first recorded {alias}; nothing to roll back to")
    event = move_alias(tracking_uri, name, alias, previous, "rollback", reason or f"rollback from version {now}")
    assert event is not None  # previous != now by construction of the history
    return event


def list_versions(tracking_uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Every version (of ``name``, or of every registered model), newest first, with aliases and gate tags."""
    client = _client(tracking_uri)
    query = f"name = '{name}'" if name else ""
    out, aliases = [], {}
    if name:  # an unknown name is an error, not an empty list
        aliases[name] = dict(client.get_registered_model(name).aliases or {})
    for mv in client.search_model_versions(query):
        if mv.name not in aliases:  # search results carry no aliases: the registered model maps alias → version
            aliases[mv.name] = dict(client.get_registered_model(mv.name).aliases or {})
        tags = dict(mv.tags or {})
        held = sorted(a for a, v in aliases[mv.name].items() if str(v) == str(mv.version))
        out.append({"name": mv.name, "version": str(mv.version), "aliases": held,
                    "created": datetime.datetime.fromtimestamp(mv.creation_timestamp / 1000, datetime.timezone.utc)
                    .isoformat(timespec="seconds"), "run_id": mv.run_id or "",
                    "gate": tags.get("gate.decision", ""), "gate_reason": tags.get("gate.reason", ""),
                    "metrics": {k[len("metrics."):]: v for k, v in tags.items() if k.startswith("metrics.student.")}})
    return sorted(out, key=lambda v: (v["name"], -int(v["version"])))
