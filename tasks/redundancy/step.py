"""The ``analyse_redundancy`` DAG step: which teacher blocks matter, by five scores, per calibration image.

    srcompress run --config configs/tiny.yaml --until analyse_redundancy

On a seeded calibration subset of the latent cache, the frozen teacher is run with its blocks captured; the
scores (``models/pruning/redundancy.py``) go to a report (JSON + CSV), box-plots per block and a Kendall-τ
rank-agreement table, in the store and as MLflow artifacts. Cached by (latents and teacher digests, config,
teacher load settings, code version); the manifest (kind ``redundancy``) points at ``report.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.models.device import resolve_device
from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.redundancy import SCORES, block_scores
from srcompress.tasks.common.latents import calibration_subset, center_tile
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import load_settings, materialize_teacher
from srcompress.tasks.redundancy.config import RedundancyConfig
from srcompress.tasks.redundancy.report import write_report
from srcompress.tasks.common.threads import use_threads

STEP = "analyse_redundancy"
ADAPTATION = ("PGP-DiffSR compares block outputs at adjacent sampling steps; a one-step teacher has none, so "
              "Φ_cos / Ψ_KL compare outputs at adjacent σ on z_σ = σ·z_LQ + (1−σ)·z_HQ under the teacher's fixed "
              "conditioning (docs/methods.md §6)")


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: RedundancyConfig, teacher_cfg: TeacherConfig) -> str:
    return canonical_hash({"redundancy": cfg.model_dump(mode="json", exclude={"device"}),
                           "teacher": load_settings(teacher_cfg)})


@task(name="redundancy-scores", cache_policy=NO_CACHE, retries=0)
def compute(ctx: RunContext, cfg: RedundancyConfig, teacher_cfg: TeacherConfig, latents: Manifest, teacher: Manifest,
            key: str) -> dict:
    """Scores on the calibration subset → report files under the work dir and in the store."""
    use_threads(ctx)
    store = ctx.get_store()
    device = resolve_device(cfg.device or ctx.device, "redundancy.device" if cfg.device else "run.device")
    net = materialize_teacher(store, teacher, teacher_cfg, Path(ctx.workdir) / "teachers", device)
    cal = calibration_subset(store, latents, cfg.calibration_size, cfg.seed)
    cal = {k: center_tile(v, net.tile) for k, v in cal.items()}
    masker = DepthMasker(net)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in SCORES}
    for i in range(0, len(cal["lq"]), cfg.batch_size):
        s = block_scores(net, cal["lq"][i : i + cfg.batch_size].to(device), cal["hq"][i : i + cfg.batch_size].to(device),
                         cfg.sigmas, masker)
        for k, v in s.items():
            parts[k].append(v.cpu())
    scores = {k: torch.cat(v, dim=1) for k, v in parts.items()}
    out = Path(ctx.workdir) / "redundancy" / key[:16]
    info = {"format": "srcompress.redundancy.v1", "calibration_pairs": int(len(cal["lq"])), "seed": cfg.seed,
            "sigmas": cfg.sigmas, "softmax_axis": cfg.kl_axis, "adaptation": ADAPTATION,
            "latent_crop": f"centre {net.tile}x{net.tile} tile" if net.tile else "whole latent",
            "teacher_digest": teacher.digest, "latents_digest": latents.digest,
            "per_image": {k: v.tolist() for k, v in scores.items()}}
    files = write_report(masker.names, scores, out, info)
    listing = {}
    for name, path in files.items():
        obj = store.put_file(f"redundancy/{key[:24]}/{name}", path)
        listing[name] = {"uri": obj.uri, "sha256": obj.sha256}
    summary = json.loads(files["report.json"].read_text())
    return {"out": str(out), "listing": listing, "blocks": masker.names, "pairs": info["calibration_pairs"], "kendall_tau": summary["kendall_tau"],
            "order": {k: v["least_important_first"] for k, v in summary["scores"].items()}}


def run_redundancy(ctx: RunContext, cfg: RedundancyConfig, teacher_cfg: TeacherConfig, latents: Manifest,
                   teacher: Manifest) -> Manifest:
    """Step driver: step cache → scores → report + manifest, in one nested MLflow run."""
    log = get_run_logger()
    tracker, cache = ctx.get_tracker(), ctx.get_cache()
    code_ver, chash = step_code_version(), step_config_hash(cfg, teacher_cfg)
    inputs = {"latents": latents.digest, "teacher": teacher.digest}
    key = cache_key(STEP, chash, inputs, code_ver)
    hit = cache.get(STEP, key)
    if hit is not None and not cache.listed_intact(hit.extra["files"]):
        hit = None  # a lost or corrupted report file: recompute (docs/architecture.md §6)
    with tracker.step_run(ctx.parent_run_id, STEP, {"redundancy": cfg.model_dump(mode="json")},
                          tags={"cache_key": key, "cache_hit": hit is not None}) as run_id:
        tracker.log_manifest(run_id, latents, context="calibration")
        tracker.log_manifest(run_id, teacher, context="model")
        if hit is not None:
            log.info("analyse_redundancy: cache hit %s", key[:12])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        t0 = time.perf_counter()
        r = compute(ctx, cfg, teacher_cfg, latents, teacher, key)
        report = r["listing"]["report.json"]
        manifest = Manifest(kind="redundancy", step=STEP, uri=report["uri"], digest=report["sha256"],
                            config_hash=chash, inputs=inputs, code_version=code_ver, cache_key=key, run_id=run_id,
                            counts={"blocks": len(r["blocks"]), "calibration_pairs": r["pairs"],
                                    "scores": len(SCORES)},
                            extra={"files": r["listing"], "least_important_first": r["order"],
                                   "kendall_tau": r["kendall_tau"], "softmax_axis": cfg.kl_axis})
        tracker.log_artifact(run_id, r["out"], "redundancy")
        tracker.log_metrics(run_id, {"seconds": time.perf_counter() - t0} | {
            f"kendall.{a}.{b}": v for a, row in r["kendall_tau"].items() for b, v in row.items()
            if v is not None and a < b})
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        log.info("analyse_redundancy: least important first (block influence): %s",
                 ", ".join(r["order"]["block_influence"]))
        return manifest
