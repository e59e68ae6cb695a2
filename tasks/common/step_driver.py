"""The skeleton every DAG step's driver repeats, written once (docs/architecture.md §1, §6):

    cache key → verified hit → nested MLflow run → listing → manifest

    def run_mystep(ctx, cfg, teacher: Manifest, pairs: Manifest) -> Manifest:
        spec = StepSpec(STEP, "mystep", step_config_hash(cfg), code_version(__name__),
                        inputs={"teacher": teacher, "pairs": pairs}, params={"mystep": cfg.model_dump(mode="json")})
        return drive_step(ctx, spec, lambda run_id, key: compute(ctx, cfg, ..., key))

``compute`` returns a :class:`StepOutput`: where the result lives (``uri`` + ``digest``), the ``files`` it wrote
to the store (name → {uri, sha256}: a hit is used only when every listed object is still there and intact, else
the step recomputes), counts, small extra facts, metrics, curves and a local folder of artifacts for MLflow.
The driver builds the manifest (config hash, input digests, code version, cache key, producing run) so no step
spells those out by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from prefect import get_run_logger

from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key


@dataclass(frozen=True)
class StepSpec:
    step: str                       # the DAG step: cache namespace and MLflow run name
    kind: str                       # the manifest kind it produces
    config_hash: str
    code_version: str
    inputs: Mapping[str, Manifest]  # input name → manifest: digests enter the key, each is logged as an input
    params: Mapping[str, Any]       # MLflow params of the step run
    contexts: Mapping[str, str] = field(default_factory=dict)  # input name → MLflow dataset context (model, training,
    #                                                            calibration, evaluation); default: the input name


@dataclass
class StepOutput:
    uri: str
    digest: str
    files: dict[str, dict]                       # name → {"uri", "sha256"}: what a later hit must find intact
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, Sequence[float]] = field(default_factory=dict)
    artifacts: str | None = None                 # a local folder logged to the run under artifact_path
    artifact_path: str | None = None             # default: the step's name
    message: str = ""


def drive_step(ctx: RunContext, spec: StepSpec, compute: Callable[[str, str], StepOutput]) -> Manifest:
    """Run ``compute(run_id, cache_key)`` unless a verified cached result exists; return the manifest."""
    log = get_run_logger()
    tracker, cache = ctx.get_tracker(), ctx.get_cache()
    digests = {name: m.digest for name, m in spec.inputs.items()}
    key = cache_key(spec.step, spec.config_hash, digests, spec.code_version)
    hit = cache.get(spec.step, key)
    if hit is not None and not cache.listed_intact(hit.extra.get("files", {})):
        log.warning("%s: cached result %s has a missing or corrupted file; recomputing", spec.step, key[:12])
        hit = None
    with tracker.step_run(ctx.parent_run_id, spec.step, dict(spec.params),
                          tags={"cache_key": key, "cache_hit": hit is not None}
                          | key_tags(spec.step, spec.config_hash, digests, spec.code_version)) as run_id:
        for name, m in spec.inputs.items():
            tracker.log_manifest(run_id, m, context=spec.contexts.get(name, name))
        if hit is not None:
            log.info("%s: cache hit %s", spec.step, key[:12])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        t0 = time.perf_counter()
        out = compute(run_id, key)
        manifest = Manifest(kind=spec.kind, step=spec.step, uri=out.uri, digest=out.digest,
                            config_hash=spec.config_hash, inputs=digests, code_version=spec.code_version,
                            cache_key=key, run_id=run_id, counts=out.counts, extra={"files": out.files, **out.extra})
        if out.artifacts:
            tracker.log_artifact(run_id, out.artifacts, out.artifact_path or spec.step)
        if out.curves:
            tracker.log_curves(run_id, out.curves)
        tracker.log_metrics(run_id, {"seconds": time.perf_counter() - t0, **out.metrics})
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        if out.message:
            log.info("%s: %s", spec.step, out.message)
        return manifest
