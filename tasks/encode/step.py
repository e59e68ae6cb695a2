"""The ``encode_latents`` DAG step: a Ray Data actor pool streams pairs shards through the VAE and the teacher.

    srcompress run --config configs/tiny.yaml --until encode_latents
    srcompress run --config my.yaml --set run.ray_address=10.0.0.5:6379 --set encode.num_actors=8

The Prefect task is the Ray driver (docs/architecture.md §1): it starts or joins a Ray cluster, feeds one
row per pairs shard (references only, never tensors) to ``EncoderActor``s, and collects one small row per
latent shard. Finished shards are content-addressed in the store, so a rerun or a resumed run skips them.
"""

from __future__ import annotations

import json
import os
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version, digest_of_digests
from srcompress.infra.ray_cluster import ray_session
from srcompress.tasks.common.pairs import shard_refs
from srcompress.tasks.encode.config import EncodeConfig
from srcompress.tasks.encode.worker import EncoderActor
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import load_settings

STEP = "encode_latents"


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: EncodeConfig, teacher_cfg: TeacherConfig) -> str:
    """What the latents depend on: the encode settings (not placement) and how the teacher is loaded."""
    return canonical_hash({"encode": cfg.compute_settings(), "teacher": load_settings(teacher_cfg)})


def encode_dataset(ctx: RunContext, cfg: EncodeConfig, teacher_cfg: TeacherConfig, refs: list, teacher: Manifest,
                   code_ver: str, regressor: Manifest | None = None):
    """The lazy Ray Data pipeline: one row per pairs shard → ``EncoderActor`` pool → one row per latent shard."""
    import ray

    ds = ray.data.from_items([{"index": r.index, "key": r.key, "sha256": r.sha256, "count": r.count} for r in refs],
                             override_num_blocks=max(1, len(refs)))
    return ds.map_batches(
        EncoderActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
        fn_constructor_kwargs={"ctx_json": ctx.model_dump_json(), "teacher_manifest_json": teacher.to_json(),
                               "teacher_cfg_json": teacher_cfg.model_dump_json(),
                               "cfg_json": cfg.model_dump_json(), "code_ver": code_ver,
                               "config_hash": step_config_hash(cfg, teacher_cfg),
                               "regressor_manifest_json": regressor.to_json() if regressor is not None else None})


@task(name="encode-latents", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def encode_on_ray(ctx: RunContext, cfg: EncodeConfig, teacher_cfg: TeacherConfig, pairs: Manifest,
                  teacher: Manifest, code_ver: str, regressor: Manifest | None = None) -> list[dict]:
    """Run the actor pool over every pairs shard; returns one small row per latent shard, in shard order."""
    log = get_run_logger()
    refs = shard_refs(ctx.get_store(), pairs)
    with ray_session(ctx.ray_address, num_cpus=None if ctx.ray_address else os.cpu_count()) as info:
        log.info("encode_latents: %d shards on Ray %s with %d actor(s)", len(refs), info, cfg.num_actors)
        ds = encode_dataset(ctx, cfg, teacher_cfg, refs, teacher, code_ver, regressor)
        rows = []
        for row in ds.iter_rows():  # streamed: rows are tiny, latents stay in the store
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            log.info("encode_latents: shard %d/%d %s (%.1fs)", len(rows), len(refs),
                     "done" if rows[-1]["computed"] else "cached", rows[-1]["seconds"])
    return sorted(rows, key=lambda r: r["index"])


def run_encode(ctx: RunContext, cfg: EncodeConfig, teacher_cfg: TeacherConfig, pairs: Manifest,
               teacher: Manifest, regressor: Manifest | None = None) -> Manifest:
    """Step driver: step cache → Ray actor pool → latent index + manifest, in one nested MLflow run.
    ``regressor`` (the train_mmle step's) is required by, and only used with, ``encode.teacher_steps: adaptive``."""
    if (cfg.teacher_steps == "adaptive") != (regressor is not None):
        raise ValueError("encode.teacher_steps: adaptive needs the train_mmle step's regressor (adaptive.enabled), "
                         "and only it uses one")
    tracker, cache, store = ctx.get_tracker(), ctx.get_cache(), ctx.get_store()
    code_ver = step_code_version()
    config_hash = step_config_hash(cfg, teacher_cfg)
    inputs = {"pairs": pairs.digest, "teacher": teacher.digest} | ({"regressor": regressor.digest} if regressor else {})
    key = cache_key(STEP, config_hash, inputs, code_ver)
    hit = cache.get(STEP, key)
    if hit is not None and not cache.shards_present(hit):
        hit = None
    t0 = time.perf_counter()
    with tracker.step_run(ctx.parent_run_id, STEP, {"encode": cfg.model_dump(mode="json")},
                          tags={"cache_key": key, "cache_hit": hit is not None}
                          | key_tags(STEP, config_hash, inputs, code_ver)) as run_id:
        tracker.log_manifest(run_id, pairs, context="input")
        tracker.log_manifest(run_id, teacher, context="model")
        if regressor is not None:
            tracker.log_manifest(run_id, regressor, context="model")
        if hit is not None:
            get_run_logger().info("encode_latents: cache hit %s; nothing to do", key[:12])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        rows = encode_on_ray(ctx, cfg, teacher_cfg, pairs, teacher, code_ver, regressor)
        conv = json.loads(rows[0]["convention"]) if rows else {}  # as loaded, with teacher.* overrides applied
        index = {"format": "srcompress.latents-index.v1", "pairs_digest": pairs.digest, "teacher_digest": teacher.digest,
                 "vae_digest": teacher.extra.get("vae_digest"),
                 "convention": conv, "dtype": cfg.dtype, "seed": cfg.seed, "lq_upsample": teacher_cfg.lq_upsample,
                 "shards": [{"key": r["key"], "sha256": r["sha256"], "count": r["count"]} for r in rows]}
        idx = store.put_bytes(f"encode/latents/{key}.json", json.dumps(index, indent=1, sort_keys=True).encode())
        manifest = Manifest(
            kind="latents", step=STEP, uri=idx.uri, digest=digest_of_digests(r["sha256"] for r in rows),
            config_hash=config_hash, inputs=inputs, code_version=code_ver, cache_key=key, run_id=run_id,
            counts={"latents": sum(r["count"] for r in rows), "shards": len(rows)},
            extra={"index_sha256": idx.sha256, "convention": conv, "dtype": cfg.dtype, "seed": cfg.seed,
                   "teacher_digest": teacher.digest, "vae_digest": teacher.extra.get("vae_digest"),
                   "teacher_output": cfg.teacher_output, "lq_upsample": teacher_cfg.lq_upsample,
                   "teacher_steps": cfg.teacher_steps},
        )
        cache.put(manifest)
        computed = [r for r in rows if r["computed"]]
        dt = time.perf_counter() - t0
        tracker.log_metrics(run_id, {"shards_computed": len(computed), "shards_cached": len(rows) - len(computed),
                                     "seconds": dt, "latents_per_s": sum(r["count"] for r in computed) / dt})
        tracker.log_manifest_output(run_id, manifest)
        return manifest
