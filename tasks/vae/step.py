"""The ``compress_vae`` DAG step: the teacher's VAE compressed as TinySR, trained, measured and published.

    srcompress run --config configs/tiny.yaml --until compress_vae      # with vae.enabled: true

1. prune the teacher's ``AutoencoderKL`` (``models/student/vae_prune.py``): channels to ``vae.width``, attention
   removed, SepConv in the encoder;
2. train it in TinySR's two phases (``models/student/vae_train.py``) on crops of the degrade step's pairs —
   the encoder to the teacher's scaled latents (HQ and bicubic-upsampled LQ crops), the decoder to the HQ
   pixels — checkpointing trainer state to the store every ``checkpoint_every`` steps (a killed step resumes
   from its latest checkpoint and ends with the uninterrupted run's weights);
3. measure both VAEs' reconstruction (PSNR, SSIM, ST-LPIPS) on the held-out HQ crops, with MACs and parameters;
4. publish the diffusers folder (``PrunedAutoencoderKL``) with a report, a reconstruction grid and loss curves.

Cached by (teacher, pairs and hold-out digests, config, code version); the manifest (kind ``vae``) points at
the folder's index.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, code_version
from srcompress.infra.store import atomic_write_bytes
from srcompress.models.device import resolve_device
from srcompress.models.efficiency import count_macs
from srcompress.models.iqa import MetricEnv
from srcompress.models.iqa.registry import build_metric
from srcompress.models.student.gan import make_discriminator
from srcompress.models.student.vae_prune import prune_vae, refit_output_convs, separate_encoder
from srcompress.models.student.vae_train import VAETrainer, VAETrainSettings, reconstruction
from srcompress.models.teachers.vae_init import check_layout, fit_linear_decoder, realize_decoder
from srcompress.tasks.common.pairs import iter_pairs
from srcompress.tasks.common.plots import png_bytes, pyplot
from srcompress.tasks.common.step_driver import StepOutput, StepSpec, drive_step
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import load_settings, materialize_teacher, publish_folder
from srcompress.tasks.common.threads import use_threads
from srcompress.tasks.common.training import perceptual_net
from srcompress.tasks.vae.config import VAECompressConfig

STEP = "compress_vae"
NOT_RESULTS = {"device", "log_every", "checkpoint_every", "enabled"}  # change how, not what, is computed


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: VAECompressConfig, teacher_cfg: TeacherConfig) -> str:
    return canonical_hash({"vae": cfg.model_dump(mode="json", exclude=NOT_RESULTS),
                           "teacher": load_settings(teacher_cfg)})


def train_settings(cfg: VAECompressConfig) -> VAETrainSettings:
    return VAETrainSettings(enc_lr=cfg.enc_lr, dec_lr=cfg.dec_lr, d_lr=cfg.d_lr, l1_weight=cfg.l1_weight,
                            perceptual_weight=cfg.perceptual_weight, gan_weight=cfg.gan_weight,
                            schedule=cfg.schedule, encoder_steps=cfg.encoder_steps, decoder_steps=cfg.decoder_steps)


def _pairs(store, manifest: Manifest, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``limit`` pairs as float [0, 1] (LQ bicubic-upsampled to the HQ size), read shard by shard."""
    lqs, hqs, n = [], [], 0
    for _, lq, hq, _ in iter_pairs(store, manifest):
        take = min(len(hq), limit - n)
        lqs.append(lq[:take])
        hqs.append(hq[:take])
        n += take
        if n >= limit:
            break
    hq = torch.cat(hqs).float() / 255
    lq = F.interpolate(torch.cat(lqs).float() / 255, size=hq.shape[-2:], mode="bicubic", align_corners=False)
    return lq.clamp(0, 1), hq


def _crops(images: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(images), (n,), generator=g)
    i = int(torch.randint(0, images.shape[-2] - size + 1, (1,), generator=g))
    j = int(torch.randint(0, images.shape[-1] - size + 1, (1,), generator=g))
    return images[idx, :, i : i + size, j : j + size]


class _Checkpoints:
    """Trainer state in the store under ``prefix`` (one ``latest.pt``; torch's weights-only loader reads it)."""

    def __init__(self, store, prefix: str):
        self.store, self.key = store, f"{prefix}/latest.pt"

    def load(self) -> dict | None:
        if not self.store.exists(self.key):
            return None
        try:
            return torch.load(io.BytesIO(self.store.get_bytes(self.key)), map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable: start over rather than fail the step
            get_run_logger().warning("compress_vae: checkpoint %s unreadable (%s); starting over", self.key, exc)
            return None

    def save(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.put_bytes(self.key, buf.getvalue())


@torch.no_grad()
def _reconstruction_scores(vaes: dict, images: torch.Tensor, scale: float, shift: float, device) -> tuple[dict, dict]:
    env = MetricEnv(device=str(device))
    metrics = {name: build_metric(name, env) for name in ("psnr", "ssim", "st_lpips")}
    scores, recons = {}, {}
    for label, vae in vaes.items():
        rec = torch.cat([reconstruction(vae, x.to(device), scale, shift).cpu() for x in images.split(4)])
        recons[label] = rec
        scores[label] = {m: float(metric.score(rec, images).mean()) for m, metric in metrics.items()}
    return scores, recons


def _figures(out: Path, history: dict, images: torch.Tensor, recons: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, phase in zip(axes, ("encoder", "decoder")):
        for name, values in history.items():
            if name.startswith(phase) and values:
                ax.plot(range(1, len(values) + 1), values, label=name.split(".", 1)[1])
        ax.set_title(f"{phase} phase"), ax.set_xlabel("step"), ax.legend()
    atomic_write_bytes(out / "losses.png", png_bytes(fig))
    n = min(4, len(images))
    rows = [images[:n]] + [recons[k][:n] for k in recons]
    fig, axes = plt.subplots(n, len(rows), figsize=(2.2 * len(rows), 2.2 * n), squeeze=False)
    for c, (title, row) in enumerate(zip(["HQ", *recons], rows)):
        for r in range(n):
            axes[r][c].imshow(row[r].permute(1, 2, 0).clamp(0, 1).numpy()), axes[r][c].axis("off")
        axes[0][c].set_title(title)
    atomic_write_bytes(out / "reconstruction.png", png_bytes(fig))


@torch.no_grad()
def _initialise(cfg: VAECompressConfig, teacher_vae, hq: torch.Tensor, device, log) -> tuple[torch.nn.Module, dict]:
    """Prune, then (options) re-fit the encoder's output conv and realise a fitted linear decoder, and only then
    split the encoder into SepConvs (the re-fit solves for dense kernels)."""
    vae, report = prune_vae(teacher_vae, cfg.width, cfg.remove_attention, separable_encoder=False)
    if cfg.refit:
        probe = hq[:64].to(device) * 2 - 1
        report["refit"] = refit_output_convs(vae, teacher_vae, probe, parts=("encoder",))
        log.info("compress_vae: encoder output re-fitted (latent RMS %.4g → %.4g)",
                 report["refit"]["encoder_rms_before"], report["refit"]["encoder_rms_after"])
    if cfg.decoder_init == "linear":
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.enable_grad():
            lin, losses = fit_linear_decoder(lambda x: teacher_vae.encode(x).latent_dist.mean, hq.to(device) * 2 - 1,
                                             check_layout(vae), cfg.linear_steps, cfg.linear_lr, 16, 48, g,
                                             log=lambda m: log.info("compress_vae: %s", m), name="vae (linear decoder)")
        realize_decoder(vae, lin)
        report["linear_decoder_mse"] = float(sum(losses[-20:]) / max(len(losses[-20:]), 1))
    if cfg.separable_encoder:
        separate_encoder(vae)
    report["separable_encoder"] = bool(cfg.separable_encoder)
    report["params"] = sum(p.numel() for p in vae.parameters())
    return vae, report


@task(name="compress-vae", cache_policy=NO_CACHE, retries=0)
def compute(ctx: RunContext, cfg: VAECompressConfig, teacher_cfg: TeacherConfig, pairs: Manifest,
            teacher_m: Manifest, holdout: Manifest | None, key: str) -> StepOutput:
    from diffusers import AutoencoderKL

    log = get_run_logger()
    use_threads(ctx)
    store = ctx.get_store()
    device = resolve_device(cfg.device or ctx.device, "vae.device" if cfg.device else "run.device")
    teacher = materialize_teacher(store, teacher_m, teacher_cfg, Path(ctx.workdir) / "teachers", device)
    if not isinstance(teacher.vae, AutoencoderKL):
        raise ValueError(f"vae: compression derives from the teacher's AutoencoderKL; this teacher's VAE is a "
                         f"{type(teacher.vae).__name__}")
    scale, shift = teacher.convention.scaling_factor, teacher.convention.shift_factor
    torch.manual_seed(cfg.seed)
    lq, hq = _pairs(store, pairs, cfg.max_pairs)
    vae, report = _initialise(cfg, teacher.vae, hq, device, log)
    f = teacher.latent_factor
    crop = max(f, min(cfg.crop, hq.shape[-1], hq.shape[-2]) // f * f)
    settings = train_settings(cfg)
    lp = perceptual_net(device) if cfg.perceptual_weight > 0 and cfg.decoder_steps else None
    disc = None
    if cfg.gan_weight > 0 and cfg.decoder_steps:
        disc = make_discriminator(cfg.discriminator, perceptual_net(device) if cfg.discriminator ==
                                  "projected_stlpips" else None).to(device)
    trainer = VAETrainer(vae, teacher.vae, scale, shift, settings, lp, disc)
    ckpt = _Checkpoints(store, f"vae/{key[:24]}/checkpoint")
    state = ckpt.load()
    if state is not None:
        trainer.load_state_dict(state)
        log.info("compress_vae: resumed at step %d", sum(trainer.steps.values()))
    total = cfg.encoder_steps + cfg.decoder_steps
    enc_pool = torch.cat([hq, lq])  # TinySR's encoder sees degraded inputs too: the student encodes LQ
    for s in range(sum(trainer.steps.values()), total):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s)  # per step: a resume draws the same crops
        if s < cfg.encoder_steps:
            loss = trainer.encoder_step(_crops(enc_pool, cfg.batch_size, crop, g).to(device))
        else:
            loss = trainer.decoder_step(_crops(hq, cfg.batch_size, crop, g).to(device))
        if (s + 1) % cfg.log_every == 0 or s + 1 == total:
            log.info("compress_vae: step %d/%d (%s) loss %.4f", s + 1, total,
                     "encoder" if s < cfg.encoder_steps else "decoder", loss)
        if (s + 1) % cfg.checkpoint_every == 0 and s + 1 < total:
            ckpt.save(trainer.state_dict())
    vae.eval().requires_grad_(False)
    held = _pairs(store, holdout, cfg.eval_size)[1] if holdout is not None else hq[: cfg.eval_size]
    scores, recons = _reconstruction_scores({"teacher_vae": teacher.vae, "compressed_vae": vae}, held, scale,
                                            shift, device)
    probe = held[:1].to(device)
    macs = {label: count_macs(lambda m=m: reconstruction(m, probe, scale, shift))
            for label, m in (("teacher_vae", teacher.vae), ("compressed_vae", vae))}
    out = Path(ctx.workdir) / "vae" / key[:16]
    shutil.rmtree(out, ignore_errors=True)
    folder = out / "folder"
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    info = {"format": "srcompress.vae.v1", **report, "latent_factor": f, "scaling_factor": scale,
            "shift_factor": shift, "steps": dict(trainer.steps), "crop": crop,
            "eval": {"images": "held-out HQ crops" if holdout is not None else "training HQ crops",
                     "count": int(len(held)), "size": list(held.shape[-2:])},
            "reconstruction": scores, "macs_per_image": macs, "teacher_digest": teacher_m.digest,
            "discriminator": type(disc).__name__ if disc is not None else None}
    atomic_write_bytes(folder / "report.json", json.dumps(info, indent=1, sort_keys=True).encode())
    _figures(out, trainer.history, held, recons)
    uri, digest, index = publish_folder(store, folder, f"vae/{key[:24]}")
    files = {rel: {"uri": store.uri(e["key"]), "sha256": e["sha256"]} for rel, e in index["files"].items()}
    idx_sha = store.stat(store.key_from_uri(uri)).sha256
    files["index.json"] = {"uri": uri, "sha256": idx_sha}
    metrics = {f"{label}.{m}": v for label, row in scores.items() for m, v in row.items()}
    metrics |= {f"{label}.macs": float(v) for label, v in macs.items()}
    metrics |= {"params_teacher_vae": report["params_teacher"], "params_compressed_vae": report["params"]}
    t, c = scores["teacher_vae"], scores["compressed_vae"]
    return StepOutput(uri=uri, digest=digest, files=files, counts={"params": report["params"],
                                                                    "train_pairs": int(len(hq))},
                      extra={"index_sha256": idx_sha, "report": {k: info[k] for k in (
                          "widths", "teacher_widths", "attention_removed", "separable_encoder", "params",
                          "params_teacher", "reconstruction", "macs_per_image", "eval", "discriminator")}},
                      metrics=metrics, curves={k: v for k, v in trainer.history.items() if v}, artifacts=str(out),
                      message=(f"compressed VAE {report['params'] / 1e6:.2f}M params ({report['params_teacher'] / 1e6:.2f}M), "
                               f"PSNR {c['psnr']:.2f} vs teacher VAE {t['psnr']:.2f} dB, ST-LPIPS "
                               f"{c['st_lpips']:.4f} vs {t['st_lpips']:.4f}, {macs['teacher_vae'] / max(macs['compressed_vae'], 1):.1f}x fewer MACs"))


def run_compress_vae(ctx: RunContext, cfg: VAECompressConfig, teacher_cfg: TeacherConfig, pairs: Manifest,
                     teacher: Manifest, holdout: Manifest | None = None) -> Manifest:
    """Step driver (tasks/common/step_driver.py): cached, one nested MLflow run, a ``vae`` manifest."""
    inputs = {"pairs": pairs, "teacher": teacher} | ({"holdout": holdout} if holdout is not None else {})
    spec = StepSpec(STEP, "vae", step_config_hash(cfg, teacher_cfg), step_code_version(), inputs,
                    {"vae": cfg.model_dump(mode="json")},
                    contexts={"pairs": "training", "teacher": "model", "holdout": "evaluation"})
    return drive_step(ctx, spec, lambda run_id, key: compute(ctx, cfg, teacher_cfg, pairs, teacher, holdout, key))
