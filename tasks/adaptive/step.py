"""The ``train_mmle`` DAG step: AdaDiffSR's MMLE gain regressor for a multi-step teacher.

    srcompress run --config configs/tiny-multistep.yaml --until train_mmle      # adaptive.enabled: true

1. sample ``train_regions`` regions (``adaptive.region`` latent cells) of the degrade step's training pairs;
2. run the teacher's trajectory on them at the codebook's finest interval, scoring every step's decoded x0
   against the region's HQ crop with the MMLE metric set (``models/adaptive/train.py``);
3. train the regressor (L2) on three quarters of the regions, measure its error on the rest beside the zero
   predictor's, and publish its weights, its config and a plot (loss; true gains by timestep).

Cached by (teacher, pairs digests, config, code version); the manifest (kind ``regressor``) is what encode and
evaluate load to run ``teacher_adaptive``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import save_file

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, code_version
from srcompress.infra.store import atomic_write_bytes
from srcompress.models.adaptive.train import gain_dataset, regressor_error, train_regressor
from srcompress.models.device import resolve_device
from srcompress.models.metrics import bicubic_to
from srcompress.tasks.adaptive.config import AdaptiveConfig
from srcompress.tasks.common.adaptive import CONFIG, WEIGHTS
from srcompress.tasks.common.pairs import load_all_pairs
from srcompress.tasks.common.plots import png_bytes, pyplot
from srcompress.tasks.common.step_driver import StepOutput, StepSpec, drive_step
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import load_settings, materialize_teacher
from srcompress.tasks.common.threads import use_threads
from srcompress.tasks.common.training import perceptual_net

STEP = "train_mmle"


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: AdaptiveConfig, teacher_cfg: TeacherConfig) -> str:
    return canonical_hash({"adaptive": cfg.model_dump(mode="json", exclude=set(cfg.NOT_RESULTS)),
                           "teacher": load_settings(teacher_cfg)})


def regions(teacher, lq: torch.Tensor, hq: torch.Tensor, cfg: AdaptiveConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_regions`` random (pair, position) regions: LQ latents (region cells) and their HQ pixel crops."""
    g = torch.Generator().manual_seed(cfg.seed)
    f, px = teacher.latent_factor, cfg.region * teacher.latent_factor
    if hq.shape[-1] < px or hq.shape[-2] < px:
        raise ValueError(f"adaptive.region={cfg.region} latent cells ({px} px) is larger than the training crops "
                         f"({hq.shape[-1]} px)")
    z, h = [], []
    for _ in range(cfg.train_regions):
        k = int(torch.randint(0, len(hq), (1,), generator=g))
        i, j = (int(torch.randint(0, (hq.shape[d] - px) // f + 1, (1,), generator=g)) * f for d in (-2, -1))
        with torch.no_grad():
            z.append(teacher.encode(lq[k : k + 1, :, i : i + px, j : j + px]))
        h.append(hq[k : k + 1, :, i : i + px, j : j + px])
    return torch.cat(z), torch.cat(h)


def plot(losses: list[float], data: dict) -> bytes:
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(9, 3))
    a.plot(losses, lw=0.6)
    a.set_yscale("log")
    a.set_xlabel("regressor step")
    a.set_ylabel("L2 loss")
    t = data["t"].float().numpy()
    b.scatter(t, data["gains"][:, 0].numpy(), s=3, label="FR gain")
    b.scatter(t, data["gains"][:, 1].numpy(), s=3, label="NR gain")
    b.invert_xaxis()
    b.set_xlabel("timestep")
    b.set_ylabel("tanh(R_i − R_i−1)")
    b.legend(fontsize=7)
    return png_bytes(fig)


@task(name="train-mmle", cache_policy=NO_CACHE, retries=0)
def compute(ctx: RunContext, cfg: AdaptiveConfig, teacher_cfg: TeacherConfig, pairs: Manifest, teacher_m: Manifest,
            key: str) -> StepOutput:
    log = get_run_logger()
    use_threads(ctx)
    store = ctx.get_store()
    device = resolve_device(cfg.device or ctx.device, "adaptive.device" if cfg.device else "run.device")
    teacher = materialize_teacher(store, teacher_m, teacher_cfg, Path(ctx.workdir) / "teachers", device)
    if getattr(teacher, "kind", None) != "multistep":
        raise ValueError(f"adaptive.enabled needs a multi-step teacher; this one is {teacher.kind!r}")
    lq, hq = load_all_pairs(store, pairs)
    lq = bicubic_to(lq, hq.shape[-2:])
    z, h = regions(teacher, lq.to(device), hq.to(device), cfg)
    lp = perceptual_net(device) if cfg.fr_weights.get("stlpips") else None
    log.info("train_mmle: trajectories of %d regions (%d-cell) at interval %d", len(z), cfg.region, cfg.intervals[0])
    data = gain_dataset(teacher, z, h, cfg.weights(), cfg.dtss(),
                        (lambda a, b: lp(a, b, normalize=True)) if lp is not None else None)
    held = data["region"] >= len(z) - max(1, len(z) // 4)  # whole regions held out, not single records
    train = {k: v[~held] for k, v in data.items()}
    val = {k: v[held] for k, v in data.items()}
    reg, losses = train_regressor(train, teacher.latent_channels, data["cond"].shape[1], cfg.steps, cfg.lr,
                                  cfg.batch_size, cfg.seed, cfg.width)
    err = regressor_error(reg, val)
    log.info("train_mmle: held-out MAE FR %.4f (zero predictor %.4f), NR %.4f (%.4f)", err["mae_fr"],
             err["mae_fr_zero"], err["mae_nr"], err["mae_nr_zero"])
    out = Path(ctx.scratch("mmle", key[:24]))
    save_file({k: v.detach().cpu().contiguous() for k, v in reg.state_dict().items()}, str(out / WEIGHTS))
    meta = {"format": "srcompress.mmle.v1", "latent_channels": teacher.latent_channels,
            "cond_channels": int(data["cond"].shape[1]), "width": cfg.width,
            "adaptive": cfg.model_dump(mode="json", exclude=set(cfg.NOT_RESULTS)), "records": len(data["gains"]),
            "error": err, "teacher_digest": teacher_m.digest}
    atomic_write_bytes(out / CONFIG, json.dumps(meta, indent=1, sort_keys=True).encode())
    atomic_write_bytes(out / "training.png", plot(losses, data))
    files = {}
    for name in (WEIGHTS, CONFIG):
        obj = store.put_file(f"mmle/{key[:24]}/{name}", out / name)
        files[name] = {"uri": obj.uri, "sha256": obj.sha256}
    return StepOutput(uri=files[WEIGHTS]["uri"], digest=files[WEIGHTS]["sha256"], files=files,
                      counts={"regions": len(z), "records": len(data["gains"])}, extra={"error": err},
                      metrics={f"regressor_{k}": v for k, v in err.items()}, curves={"regressor_loss": losses},
                      artifacts=str(out), artifact_path="mmle",
                      message=f"held-out MAE FR {err['mae_fr']:.4f} vs {err['mae_fr_zero']:.4f} (zero predictor)")


def run_mmle(ctx: RunContext, cfg: AdaptiveConfig, teacher_cfg: TeacherConfig, pairs: Manifest,
             teacher: Manifest) -> Manifest:
    """Step driver (tasks/common/step_driver.py): cached, one nested MLflow run, a ``regressor`` manifest."""
    spec = StepSpec(STEP, "regressor", step_config_hash(cfg, teacher_cfg), step_code_version(),
                    {"pairs": pairs, "teacher": teacher}, {"adaptive": cfg.model_dump(mode="json")},
                    contexts={"pairs": "training", "teacher": "model"})
    return drive_step(ctx, spec, lambda run_id, key: compute(ctx, cfg, teacher_cfg, pairs, teacher, key))
