"""The two distillation DAG steps, ``distill_latent`` (stage 1) and ``distill_pixel`` (stage 2).

    srcompress run --config configs/tiny.yaml --until distill_pixel [--set distill.num_workers=2]

Each stage is its own cached step: its key is (the stage's settings, its input digests, code version), so
changing stage 2 never redoes stage 1. The Prefect task is the driver: it launches ``tasks/distill/worker.py``
on ``distill.num_workers`` DeepSpeed ranks as Ray actors (like the search) and turns rank 0's published
student folder into a ``student`` manifest; MLflow gets the loss curves (``stage1.*`` / ``stage2.*``), the
comparison grid and the result. A killed stage resumes from its latest checkpoint in the store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.infra.ray_cluster import train_on_ray
from srcompress.models.device import resolve_device
from srcompress.models.student.student import UNET_STREAMLINE
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import load_settings, published_intact
from srcompress.tasks.distill.config import DistillConfig
from srcompress.tasks.distill.worker import distill_loop

STAGES = {"stage1": "distill_latent", "stage2": "distill_pixel"}


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def stage_config_hash(cfg: DistillConfig, teacher_cfg: TeacherConfig, stage: str, phase: str) -> str:
    """What changes this stage's output: the shared settings, this stage's own, the adapter flag."""
    drop = set(cfg.NOT_RESULTS) | {"phase_adapter", "stage1", "stage2", "tiny_vae"}
    own = {"stage1": {"stage1": cfg.stage1.model_dump(mode="json")},
           "stage2": {"stage2": cfg.stage2.model_dump(mode="json"), "tiny_vae": cfg.tiny_vae.model_dump(mode="json")}}
    return canonical_hash({"distill": cfg.model_dump(mode="json", exclude=drop), **own[stage], "stage": stage,
                           "phase_adapter": phase, "teacher": load_settings(teacher_cfg)})


@task(name="distill-stage", cache_policy=NO_CACHE, retries=0)
def train_stage(ctx: RunContext, cfg: DistillConfig, teacher_cfg: TeacherConfig, stage: str,
                manifests: dict[str, Manifest], phase: str, key: str, run_id: str, ray_address: str | None) -> dict:
    """Launch the ranks; returns rank 0's published result."""
    log = get_run_logger()
    config = {"ctx": ctx.model_dump_json(), "cfg": cfg.model_dump_json(), "teacher_cfg": teacher_cfg.model_dump_json(),
              "manifests": {k: v.to_json() for k, v in manifests.items()}, "stage": stage, "key": key,
              "run_id": run_id, "phase_adapter": phase}
    use_gpu = resolve_device(cfg.device or ctx.device, "distill.device").type == "cuda"
    info = train_on_ray(distill_loop, config, cfg.num_workers, use_gpu, f"distill-{stage}-{key[:12]}", ray_address)
    log.info("%s: %d DeepSpeed rank(s) finished on Ray %s", STAGES[stage], cfg.num_workers, info)
    store = ctx.get_store()
    return json.loads(store.get_bytes(f"distill/{key[:24]}/{stage}/result.json"))


def intact(ctx: RunContext, manifest: Manifest) -> bool:
    store = ctx.get_store()
    return published_intact(store, manifest) and ctx.get_cache().listed_intact(manifest.extra.get("files", {}))


def run_distill(ctx: RunContext, cfg: DistillConfig, teacher_cfg: TeacherConfig, stage: str, latents: Manifest,
                pairs: Manifest, teacher: Manifest, mask: Manifest, stage1: Manifest | None = None,
                phase: str | None = None, ray_address: str | None = None, vae: Manifest | None = None,
                variant: str = "") -> Manifest:
    """Step driver for one stage: cache → DeepSpeed ranks → ``student`` manifest, in one nested MLflow run
    (named ``distill_<stage><variant>``: a phase ablation's or another route's run stands apart)."""
    log = get_run_logger()
    name = STAGES[stage]
    phase = cfg.phase_adapter if phase is None else phase
    width = (mask.extra.get("budget") or {}).get("vae_width")
    if width is not None and cfg.tiny_vae.enabled:  # search.budget chose the tiny VAE's width with the N:M
        cfg = cfg.with_vae_width(width)
    tracker, cache, store = ctx.get_tracker(), ctx.get_cache(), ctx.get_store()
    code_ver, chash = step_code_version(), stage_config_hash(cfg, teacher_cfg, stage, phase)
    manifests = {"latents": latents, "pairs": pairs, "teacher": teacher, "mask": mask}
    if stage == "stage2":
        if stage1 is None:
            raise ValueError("distill stage 2 needs the stage-1 student")
        manifests["stage1"] = stage1
        if vae is not None:  # the compress_vae step's VAE becomes the final student's
            manifests["vae"] = vae
    unet = teacher.extra.get("kind") in ("unet", "multistep")  # a multi-step teacher's student is a one-step UNet
    if cfg.streamline and unet:  # before any cluster starts
        raise ValueError(UNET_STREAMLINE)
    if cfg.text_stream == "drop" and unet:
        raise ValueError("distill.text_stream=drop removes SD3's text stream; a UNet has none to remove "
                         "(set distill.text_stream=keep or auto for UNet teachers)")
    inputs = {k: v.digest for k, v in manifests.items()}
    key = cache_key(name, chash, inputs, code_ver)
    hit = cache.get(name, key)
    if hit is not None and not intact(ctx, hit):
        hit = None
    ds = cfg.deepspeed.engine_config((cfg.stage1 if stage == "stage1" else cfg.stage2).batch_size)
    with tracker.step_run(ctx.parent_run_id, name + variant, {"distill": cfg.model_dump(mode="json"), "deepspeed_config": ds,
                                                    "world_size": cfg.num_workers, "phase_adapter": phase},
                          tags={"cache_key": key, "cache_hit": hit is not None, "stage": stage}
                          | key_tags(name, chash, inputs, code_ver)) as run_id:
        for k, v in manifests.items():
            tracker.log_manifest(run_id, v, context="model" if k in ("teacher", "mask", "stage1", "vae") else "training")
        if hit is not None:
            log.info("%s: cache hit %s", name, key[:12])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        t0 = time.perf_counter()
        result = train_stage(ctx, cfg, teacher_cfg, stage, manifests, phase, key, run_id, ray_address)
        student = result["student"]
        prefix = f"distill/{key[:24]}/{stage}"
        files = {"result.json": {"uri": store.uri(f"{prefix}/result.json"), "sha256": store.stat(f"{prefix}/result.json").sha256},
                 "grid.png": {"uri": store.uri(result["grid"]["key"]), "sha256": result["grid"]["sha256"]}}
        out = Path(ctx.workdir) / "distill" / key[:16]
        out.mkdir(parents=True, exist_ok=True)
        store.get_file(result["grid"]["key"], out / f"{stage}_grid.png", expected_sha256=result["grid"]["sha256"])
        tracker.log_artifact(run_id, out / f"{stage}_grid.png", "distill")
        tracker.log_text(run_id, json.dumps(result, indent=1, default=str), f"distill/{stage}_result.json")
        final = result["history"][-1] if result["history"] else {}
        tracker.log_metrics(run_id, {"seconds": time.perf_counter() - t0, "train_seconds": result["train_seconds"]}
                            | {f"final.{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))})
        desc = result["describe"]
        manifest = Manifest(kind="student", step=name, uri=student["index_uri"], digest=student["digest"],
                            config_hash=chash, inputs=inputs, code_version=code_ver, cache_key=key, run_id=run_id,
                            counts={"world_size": result["world_size"], "steps": result["steps_run"],
                                    "params_backbone": int(desc["params_backbone"]),
                                    "params_vae": int(desc["params_vae"])},
                            extra={"stage": stage, "index_sha256": student["index_sha256"], "files": files,
                                   "phase_adapter": phase, "kept_blocks": desc.get("kept_blocks"),
                                   **({"surgery": desc["surgery"]} if "surgery" in desc else {}),
                                   "streamlined": desc.get("streamlined"), "image_only": desc.get("image_only"),
                                   "tiny_vae": desc.get("tiny_vae"), "compressed_vae": desc.get("compressed_vae"),
                                   "final": final, "train_seconds": result["train_seconds"],
                                   "tiny_vae_fit": result.get("tiny_vae_fit") or {},
                                   "engines": result.get("engines") or {},
                                   "grid_uri": files["grid.png"]["uri"]})
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        log.info("%s: %d steps on %d rank(s) in %.0f s; final %s", name, result["steps_run"], result["world_size"],
                 time.perf_counter() - t0, {k: round(v, 4) for k, v in final.items() if isinstance(v, float)})
        return manifest
