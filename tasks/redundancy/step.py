"""The ``analyse_redundancy`` DAG step: which teacher blocks matter, by five scores, per calibration image.

    srcompress run --config configs/tiny.yaml --until analyse_redundancy

On a seeded calibration subset of the latent cache, the frozen teacher is run with its blocks captured; the
scores (``models/pruning/redundancy.py``) go to a report (JSON + CSV), box-plots per block and a Kendall-τ
rank-agreement table, in the store and as MLflow artifacts. Cached by (latents and teacher digests, config,
teacher load settings, code version); the manifest (kind ``redundancy``) points at ``report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, code_version
from srcompress.models.device import resolve_device
from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.redundancy import SCORES, block_scores
from srcompress.tasks.common.latents import calibration_subset, center_tile
from srcompress.tasks.common.step_driver import StepOutput, StepSpec, drive_step
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
    multistep = getattr(net, "kind", None) == "multistep"  # PGP's own axis: adjacent timesteps of its sampler
    info = {"format": "srcompress.redundancy.v1", "calibration_pairs": int(len(cal["lq"])), "seed": cfg.seed,
            "axis": f"timesteps ({net.steps}-step sampling trajectory)" if multistep else "sigma path",
            "sigmas": None if multistep else cfg.sigmas, "softmax_axis": cfg.kl_axis,
            "adaptation": None if multistep else ADAPTATION,
            "latent_crop": f"centre {net.tile}x{net.tile} tile" if net.tile else "whole latent",
            "teacher_digest": teacher.digest, "latents_digest": latents.digest,
            "per_image": {k: v.tolist() for k, v in scores.items()}}
    files = write_report(masker.names, scores, out, info)
    listing = {}
    for name, path in files.items():
        obj = store.put_file(f"redundancy/{key[:24]}/{name}", path)
        listing[name] = {"uri": obj.uri, "sha256": obj.sha256}
    summary = json.loads(files["report.json"].read_text())
    return {"out": str(out), "listing": listing, "axis": info["axis"], "blocks": masker.names, "pairs": info["calibration_pairs"], "kendall_tau": summary["kendall_tau"],
            "order": {k: v["least_important_first"] for k, v in summary["scores"].items()}}


def run_redundancy(ctx: RunContext, cfg: RedundancyConfig, teacher_cfg: TeacherConfig, latents: Manifest,
                   teacher: Manifest) -> Manifest:
    """Step driver (tasks/common/step_driver.py): step cache → scores → report + manifest, one nested MLflow run."""
    spec = StepSpec(STEP, "redundancy", step_config_hash(cfg, teacher_cfg), step_code_version(),
                    {"latents": latents, "teacher": teacher}, {"redundancy": cfg.model_dump(mode="json")},
                    contexts={"latents": "calibration", "teacher": "model"})

    def run(run_id: str, key: str) -> StepOutput:
        r = compute(ctx, cfg, teacher_cfg, latents, teacher, key)
        report = r["listing"]["report.json"]
        kendall = {f"kendall.{a}.{b}": v for a, row in r["kendall_tau"].items() for b, v in row.items()
                   if v is not None and a < b}
        return StepOutput(uri=report["uri"], digest=report["sha256"], files=r["listing"],
                          counts={"blocks": len(r["blocks"]), "calibration_pairs": r["pairs"], "scores": len(SCORES)},
                          extra={"least_important_first": r["order"], "kendall_tau": r["kendall_tau"],
                                 "softmax_axis": cfg.kl_axis, "axis": r["axis"]},
                          metrics=kendall, artifacts=r["out"], artifact_path="redundancy",
                          message="least important first (block influence): "
                                  + ", ".join(r["order"]["block_influence"]))

    return drive_step(ctx, spec, run)
