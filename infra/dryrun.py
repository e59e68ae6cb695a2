"""`srcompress run --dry-run` / `srcompress explain STEP`: which steps are cached and which would run, and why,
without computing anything (docs/architecture.md §3).

A dry run is the real flow with a stand-in tracker (:class:`DryTracker`): every step computes its cache key and
looks its result up exactly as in a real run — there is no second copy of the key logic to drift — and the
tracker, which a real step asks for a nested run before it computes, raises :class:`WouldRun` instead when the
step has no verified hit. Nothing is written to MLflow or the store. The first step that would run ends the dry
run (the steps after it depend on what it would produce); :func:`explain` then compares the step's key with the
results cached before, naming the config fields, inputs and code version that differ.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator, Mapping

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore
from srcompress.infra.tracking import param_strings

DRY_RUN_ID = "dry-run"


class WouldRun(Exception):
    """A step of a dry run has no verified cached result: it would compute."""

    def __init__(self, step: str, params: Mapping[str, Any], tags: Mapping[str, Any]):
        super().__init__(f"{step} would run")
        self.step, self.params, self.tags = step, dict(params), dict(tags)


class DryTracker:
    """Records nothing: a cache hit goes through, a step that would compute raises :class:`WouldRun`."""

    uri = "(dry run: nothing recorded)"
    experiment_id = ""

    @contextlib.contextmanager
    def step_run(self, parent_run_id: str | None, step: str, params: Mapping[str, Any],
                 tags: Mapping[str, Any] | None = None) -> Iterator[str]:
        tags = dict(tags or {})
        # the register step has no cache_hit tag: it writes to the model registry, which a dry run never does
        if not tags.get("cache_hit", False):
            raise WouldRun(step, params, tags)
        yield DRY_RUN_ID

    def step_outcomes(self, parent_run_id: str | None) -> dict[str, str]:
        return {}

    def __getattr__(self, name: str):  # log_metrics, log_manifest, set_tags, …: nothing to record
        return lambda *args, **kwargs: None


def _previous(store: ArtifactStore, step: str, limit: int = 200) -> list[Manifest]:
    out = []
    for info in store.list(f"cache/{step}/"):
        if len(out) >= limit:
            break
        with contextlib.suppress(Exception):  # a torn record is not a previous result
            out.append(Manifest.from_json(store.get_bytes(info.key)))
    return out


def _latest(manifests: list[Manifest], tracking_uri: str | None,
            run_name: str) -> tuple[Manifest | None, dict[str, str]]:
    """The manifest whose producing MLflow run started last, with that run's params ({} without MLflow); runs
    named as this step's run (``degrade`` vs ``degrade-holdout`` share a cache namespace) come first."""
    if not manifests:
        return None, {}
    if tracking_uri is None:
        return manifests[-1], {}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    best: tuple[tuple[bool, int], Manifest, dict[str, str]] | None = None
    for m in manifests:
        try:
            run = client.get_run(m.run_id) if m.run_id else None
        except Exception:  # run deleted, or another tracking server: still a previous result
            run = None
        rank = (run is not None and run.info.run_name == run_name, run.info.start_time if run is not None else -1)
        if best is None or rank > best[0]:
            best = (rank, m, dict(run.data.params) if run is not None else {})
    return best[1], best[2]


def explain(store: ArtifactStore, tracking_uri: str | None, would: WouldRun) -> list[str]:
    """Why ``would.step`` has no cached result: lines naming what differs from its latest cached result."""
    tags = would.tags
    key = str(tags.get("cache_key", ""))
    if tags.get("mode") == "import":
        return ["an imported teacher is hashed again on every run (its folder may have changed): the steps after it "
                "are looked up once it has"]
    if "cache_hit" not in tags:
        return ["the register step always runs: it looks the version up in the model registry (a dry run never "
                "writes there)"]
    previous = _previous(store, str(tags.get("cache_step", would.step)))
    same_key = [m for m in previous if m.cache_key == key]
    if same_key:
        return [f"its cached result {key[:12]} has a missing or corrupted file: recomputed from scratch"]
    prev, prev_params = _latest(previous, tracking_uri, would.step)
    if prev is None:
        return ["never computed in this store"]
    lines = []
    now_params = param_strings(would.params)
    changed = sorted(k for k in set(now_params) | set(prev_params) if now_params.get(k) != prev_params.get(k))
    if prev_params:
        lines += [f"config {k}: {prev_params.get(k, '(unset)')} → {now_params.get(k, '(unset)')}" for k in changed]
    elif prev.config_hash != tags.get("config_hash"):
        lines.append(f"config changed (hash {prev.config_hash[:12]} → {str(tags.get('config_hash', ''))[:12]})")
    inputs = json.loads(tags["inputs"]) if "inputs" in tags else None
    if inputs is not None:
        for name in sorted(set(inputs) | set(prev.inputs)):
            if inputs.get(name) != prev.inputs.get(name):
                lines.append(f"input {name}: {str(prev.inputs.get(name, '(none)'))[:12]} → "
                             f"{str(inputs.get(name, '(none)'))[:12]}")
    code = tags.get("code_version")
    if code is not None and code != prev.code_version:
        lines.append(f"code version: {prev.code_version} → {code}")
    if not lines:  # the key differs in something the params and tags do not show (e.g. a teacher setting)
        lines.append(f"its cache key differs from the latest cached result ({prev.cache_key[:12]} → {key[:12]})")
    return lines


def key_tags(step: str, config_hash: str, inputs: Mapping[str, str], code_version: str) -> dict[str, str]:
    """What a step's cache key is made of, as step-run tags: the record a dry run compares against (and a
    reader of the MLflow run sees why the step ran). ``step`` is the cache namespace the key was made in, which
    a run's name need not be (``degrade-holdout`` keys live under ``degrade``)."""
    return {"cache_step": step, "config_hash": config_hash, "inputs": json.dumps(dict(inputs), sort_keys=True),
            "code_version": code_version}
