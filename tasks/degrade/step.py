"""The ``degrade`` DAG step: HR sources → sharded LQ/HQ pairs in the artifact store + a ``pairs`` manifest.

    srcompress run --config configs/tiny.yaml --workdir runs/tiny --until degrade

Three Prefect tasks: ``degrade-scan`` (read, hash, validate, quarantine), ``degrade-shard`` (one per shard,
fanned out on the flow's task runner) and ``degrade-finalize`` (index, report, manifest). The step is cached
twice: the whole step by its cache key (config hash, source digests, code version), and each shard by its own
key, so an interrupted or partially deleted run redoes only the missing shards.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import PurePosixPath

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from srcompress.infra.config import canonical_hash, redact
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version, digest_of_digests
from srcompress.infra.ray_cluster import map_on_ray, where_am_i
from srcompress.infra.store import atomic_write_bytes
from srcompress.tasks.degrade.config import DegradeConfig
from srcompress.tasks.degrade.shards import (
    Quarantined,
    SourceRecord,
    ShardResult,
    ShardSpec,
    compute_shard,
    plan_shards,
    scan_one,
)
from srcompress.tasks.common.sources import DataConfig, list_sources
from srcompress.tasks.common.threads import ray_task_threads, set_threads, threads_for

STEP = "degrade"


class ScanResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    accepted: list[SourceRecord]
    quarantined: list[Quarantined]
    duplicates: list[tuple[str, str]]  # (name, name of the identical file kept)

    @property
    def inputs_digest(self) -> str:
        rows = [f"ok:{r.name}:{r.digest}" for r in self.accepted]
        rows += [f"bad:{q.name}:{q.digest}:{q.reason}" for q in self.quarantined]
        rows += [f"dup:{a}:{b}" for a, b in self.duplicates]
        return digest_of_digests(sorted(rows))


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(data_cfg: DataConfig, cfg: DegradeConfig, split: str = "train") -> str:
    # Where the files live is not part of the computation; their names and digests are (scan inputs).
    return canonical_hash({"degrade": cfg.model_dump(mode="json"), "split": split,
                           "data": data_cfg.model_dump(mode="json", exclude={"source", "endpoint_url"})})


@task(name="degrade-scan", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def scan_sources(ctx: RunContext, data_cfg: DataConfig, cfg: DegradeConfig, split: str = "train") -> ScanResult:
    """Read and hash every source file; quarantine what cannot be used (copied into the store, with a reason)."""
    log = get_run_logger()
    store = ctx.get_store()
    not_files: dict[str, str] = {}
    refs = list_sources(data_cfg, ctx.store, split, not_files)
    log.info("degrade-scan: %d candidate files in %s", len(refs), redact(data_cfg.source, "uri"))
    accepted: dict[str, SourceRecord] = {}
    duplicates = []
    quarantined = [Quarantined(name=name, digest=None, reason=why) for name, why in sorted(not_files.items())]
    for q in quarantined:
        log.warning("degrade-scan: skipped %s: %s", q.name, q.reason)
    for i, ref in enumerate(refs, 1):
        rec, bad, data = scan_one(ref, data_cfg, ctx.store, cfg.crop_size)
        if bad is not None:
            copied = None
            if data and len(data) <= data_cfg.copy_quarantined_mb * 2**20:
                key = f"degrade/quarantine/{bad.digest}/{PurePosixPath(ref.name).name}"
                copied = store.put_bytes(key, data).uri if not store.exists(key) else store.uri(key)
            bad = bad.model_copy(update={"copied_to": copied})
            quarantined.append(bad)
            log.warning("degrade-scan: quarantined %s: %s", ref.name, bad.reason)
        elif rec.digest in accepted:
            duplicates.append((rec.name, accepted[rec.digest].name))
            log.warning("degrade-scan: %s is identical to %s; using it once", rec.name, accepted[rec.digest].name)
        else:
            accepted[rec.digest] = rec
        if i % 50 == 0:
            log.info("degrade-scan: %d/%d files checked", i, len(refs))
    if not accepted:
        raise ValueError(f"no usable images in {data_cfg.source}: {len(quarantined)} quarantined "
                         f"({'; '.join(q.name + ': ' + q.reason for q in quarantined[:5])})")
    return ScanResult(accepted=sorted(accepted.values(), key=lambda r: r.name), quarantined=quarantined,
                      duplicates=duplicates)


def compute_or_reuse(ctx: RunContext, data_cfg: DataConfig, cfg: DegradeConfig, spec: ShardSpec,
                     threads: int) -> ShardResult:
    """One shard: the stored object when its content checks out (a corrupted shard is recomputed, not trusted),
    else computed with ``threads`` torch threads and published atomically."""
    store = ctx.get_store()
    info = store.verify(spec.object_key)
    if info is not None:
        return ShardResult(index=spec.index, key=info.key, uri=info.uri, sha256=info.sha256,
                           count=len(spec.items), computed=False)
    set_threads(threads)
    t0 = time.perf_counter()
    tmp = ctx.scratch("degrade") / f"{spec.cache_key}.{os.getpid()}.{time.monotonic_ns()}.safetensors"
    try:
        n = compute_shard(spec, data_cfg, cfg, ctx.store, tmp)
        info = store.put_file(spec.object_key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return ShardResult(index=spec.index, key=info.key, uri=info.uri, sha256=info.sha256, count=n, computed=True,
                       seconds=time.perf_counter() - t0)


def _log_shard(log, r: ShardResult, total: int) -> None:
    where = f" on {r.worker}" if r.worker else ""
    if r.computed:
        log.info("degrade: shard %d/%d done%s: %d pairs in %.1fs (%.1f pairs/s)", r.index + 1, total, where,
                 r.count, r.seconds, r.count / max(r.seconds, 1e-9))
    else:
        log.info("degrade: shard %d/%d cached (%d pairs)", r.index + 1, total, r.count)


@task(name="degrade-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      task_run_name="degrade-shard-{spec.index}")
def degrade_shard(ctx: RunContext, data_cfg: DataConfig, cfg: DegradeConfig, spec: ShardSpec, total: int,
                  workers: int) -> ShardResult:
    """Compute one shard on this process's thread pool unless it is already in the store."""
    result = compute_or_reuse(ctx, data_cfg, cfg, spec, threads_for(ctx, workers))
    _log_shard(get_run_logger(), result, total)
    return result


def shard_on_ray_worker(ctx_json: str, data_cfg_json: str, cfg_json: str, spec_json: str) -> dict:
    """A shard as a Ray task (``run.ray_address``): rebuilt from JSON on whichever node Ray picked, one torch
    thread (the task holds one CPU), the result tagged with the worker that computed it."""
    ctx = RunContext.model_validate_json(ctx_json)
    result = compute_or_reuse(ctx, DataConfig.model_validate_json(data_cfg_json),
                              DegradeConfig.model_validate_json(cfg_json), ShardSpec.model_validate_json(spec_json),
                              ray_task_threads(ctx))
    return result.model_copy(update={"worker": where_am_i()}).model_dump(mode="json")


@task(name="degrade-shards-ray", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def degrade_on_ray(ctx: RunContext, data_cfg: DataConfig, cfg: DegradeConfig, shards: list[ShardSpec]) -> list[ShardResult]:
    """Every shard as a Ray task on the cluster (one CPU each): a 100k-image dataset scales with the cluster.
    Shards already in the store come back as cached from the workers' own check, so a rerun redoes only the
    missing ones."""
    log = get_run_logger()
    calls = [(ctx.model_dump_json(), data_cfg.model_dump_json(), cfg.model_dump_json(), s.model_dump_json())
             for s in shards]
    results = []
    for _, row in map_on_ray(shard_on_ray_worker, calls, ctx.ray_address,
                             on_start=lambda info: log.info("degrade: %d shards on Ray %s", len(shards), info)):
        results.append(ShardResult.model_validate(row))
        _log_shard(log, results[-1], len(shards))
    return results


@task(name="degrade-finalize", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def finalize(ctx: RunContext, cfg: DegradeConfig, scan: ScanResult, shards: list[ShardResult], step_key: str,
             config_hash: str, inputs: dict[str, str], code_ver: str, run_id: str | None,
             split: str = "train") -> Manifest:
    """Publish the shard index and the quarantine report; record the step manifest in the step cache."""
    store = ctx.get_store()
    shards = sorted(shards, key=lambda s: s.index)
    lq_size = cfg.crop_size if cfg.final.resize_back != "none" else cfg.lq_size
    index = {
        "format": "srcompress.pairs-index.v1",
        "shards": [{"key": s.key, "uri": s.uri, "sha256": s.sha256, "count": s.count} for s in shards],
        "pairs": sum(s.count for s in shards), "scale": cfg.scale, "hq_size": cfg.crop_size, "lq_size": lq_size,
        "conventions": {"preset": cfg.preset, "usm": cfg.usm.model_dump(), "final": cfg.final.model_dump()},
    }
    report = {"quarantined": [q.model_dump() for q in scan.quarantined],
              "converted": [{"name": r.name, "conversions": r.conversions} for r in scan.accepted if r.conversions],
              "duplicates": scan.duplicates}
    idx = store.put_bytes(f"degrade/pairs/{step_key}.json", json.dumps(index, indent=1, sort_keys=True).encode())
    rep = store.put_bytes(f"degrade/reports/{step_key}.quarantine.json", json.dumps(report, indent=1).encode())
    manifest = Manifest(
        kind="pairs", step=STEP, uri=idx.uri, digest=digest_of_digests(s.sha256 for s in shards),
        config_hash=config_hash, inputs=inputs, code_version=code_ver, cache_key=step_key, run_id=run_id,
        counts={"pairs": index["pairs"], "shards": len(shards), "sources": len(scan.accepted),
                "quarantined": len(scan.quarantined), "converted": len(report["converted"]),
                "duplicates": len(scan.duplicates)},
        extra={"index_sha256": idx.sha256, "quarantine_report": rep.uri, "scale": cfg.scale,
               "hq_size": cfg.crop_size, "lq_size": lq_size, "split": split,
               # which Ray workers ("<node id>/<pid>") computed how many shards: empty on the local thread pool
               "computed_on": dict(Counter(s.worker for s in shards if s.computed and s.worker))},
    )
    ctx.get_cache().put(manifest)
    return manifest


def run_degrade(ctx: RunContext, data_cfg: DataConfig, cfg: DegradeConfig, workers: int,
                split: str = "train") -> Manifest:
    """Step driver, called from the flow: scan → (step cache | fan out shards → finalize), in one nested run.

    ``split="holdout"`` degrades only ``data.held_out`` (evaluation images never used for training).
    """
    tracker = ctx.get_tracker()
    cache = ctx.get_cache()
    t0 = time.perf_counter()
    scan = scan_sources(ctx, data_cfg, cfg, split)
    code_ver, config_hash = step_code_version(), step_config_hash(data_cfg, cfg, split)
    inputs = {"sources": scan.inputs_digest}
    step_key = cache_key(STEP, config_hash, inputs, code_ver)
    params = {"degrade": cfg.model_dump(mode="json"), "data": data_cfg.model_dump(mode="json"), "split": split}
    hit = cache.get(STEP, step_key)
    if hit is not None and not cache.shards_present(hit):
        hit = None
    run_name = STEP if split == "train" else f"{STEP}-{split}"
    with tracker.step_run(ctx.parent_run_id, run_name, params,
                          tags={"cache_key": step_key, "cache_hit": hit is not None, "split": split}
                          | key_tags(STEP, config_hash, inputs, code_ver)) as run_id:
        tracker.log_text(run_id, json.dumps(scan.model_dump(mode="json"), indent=1), "scan.json")
        if hit is not None:
            get_run_logger().info("degrade: cache hit %s (%d pairs); nothing to do", step_key[:12], hit.counts["pairs"])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        shards = plan_shards(scan.accepted, cfg, lambda inp: cache_key("degrade_shard", config_hash, inp, code_ver))
        if ctx.ray_address:
            results = degrade_on_ray(ctx, data_cfg, cfg, shards)
        else:
            futures = [degrade_shard.submit(ctx, data_cfg, cfg, s, len(shards), workers) for s in shards]
            results = [f.result() for f in futures]
        manifest = finalize(ctx, cfg, scan, results, step_key, config_hash, inputs, code_ver, run_id, split)
        computed = [r for r in results if r.computed]
        from srcompress.tasks.degrade.preview import pairs_preview  # torch: only when the step computed

        preview = pairs_preview(ctx.get_store(), manifest)
        if preview is not None:
            path = ctx.scratch("degrade") / f"{step_key[:24]}-preview.png"
            atomic_write_bytes(path, preview)
            tracker.log_artifact(run_id, path, "degrade")
        dt = time.perf_counter() - t0
        tracker.log_metrics(run_id, {"shards_computed": len(computed), "shards_cached": len(results) - len(computed),
                                     "seconds": dt, "pairs_per_s": sum(r.count for r in computed) / dt})
        tracker.log_manifest_output(run_id, manifest)
        return manifest
