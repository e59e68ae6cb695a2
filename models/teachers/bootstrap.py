"""Train the tiny SD3-style one-step teacher of the embedded default, on degraded pairs, on a CPU.

0. **VAE init** (``AutoencoderKL``): ``identity`` — one block, latent = pixels, an exact identity map by
   construction (``tiny.identity_init_vae``); ``pca`` — latent factor 4, an exact PCA encoder and a decoder
   whose fitted linear path is copied in (``vae_init.build_pca_vae``, ``vae_linear_steps``); ``random`` —
   trained from scratch. Measured on these machines: a from-scratch tiny VAE reaches ~30 dB after 1500 steps
   and that loss alone puts the teacher ~2 dB *below* bicubic, whatever the restorer learns.
1. **VAE fine-tune** (optional, ``vae_steps``): L1 reconstruction + a tiny KL on random LQ/HQ crops (with
   ``pca``, the decoder only: the encoder stays the exact projection). The latent scaling factor is then set
   as SD does: 1 / std of the HQ latents.
2. **One-step restorer** (``SD3Transformer2DModel``, t = 1000, fixed prompt embedding): ``z0 = z_L − v`` with
   loss ``MSE(v, z_L − z_H)`` (the rectified-flow target at σ = 1) on random latent *tiles*, one-cycle LR.
   ``proj_out`` starts at zero, so training starts at the identity (teacher = bicubic LQ exactly). The
   checkpoint with the best PSNR-Y on a validation split of the *training* pairs is kept (step 0 included).

SD3's positional embedding covers one tile (``pos_embed_max_size = tile / patch``) and inference tiles with
Gaussian blending — the fixed-size-embedding + tiler design of TSD-SR/TinySR (docs/methods.md §3.3, §4).

    teacher, stats = train_tiny_teacher(lq, hq, cfg, log=print)   # lq already at HQ size, both in [0, 1]
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F

from srcompress.models.metrics import boundary_loss
from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.bootstrap_config import BootstrapConfig
from srcompress.models.teachers.sd3 import SD3OneStepTeacher
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from srcompress.models.teachers.optim import one_cycle as _one_cycle, update as _update
from srcompress.models.teachers.vae_init import build_pca_vae

Tensor = torch.Tensor


def _augment(x: Tensor, y: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random flip / 90° rotation on both members of each pair (dihedral augmentation)."""
    k = int(torch.randint(0, 4, (1,), generator=g))
    if torch.rand(1, generator=g).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x.rot90(k, (-2, -1)), y.rot90(k, (-2, -1))


def train_vae(teacher: SD3OneStepTeacher, images: Tensor, cfg: BootstrapConfig, g: torch.Generator,
              log: Callable[[str], None]) -> list[float]:
    vae = teacher.vae
    vae.train().requires_grad_(cfg.vae_init != "pca")
    if cfg.vae_init == "pca":  # the encoder stays the exact projection; the decoder learns what is non-linear
        for part in (vae.decoder, vae.post_quant_conv):
            if part is not None:
                part.requires_grad_(True)
    opt = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], cfg.vae_lr, betas=(0.9, 0.99))
    sched = _one_cycle(opt, cfg.vae_lr, cfg.vae_steps)
    crop, n, size = cfg.vae_crop, len(images), images.shape[-1]
    losses = []
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        i, j = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=g))
        x = images[idx, :, i : i + crop, j : j + crop] * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample
        loss = (rec - x).abs().mean() + cfg.kl_weight * post.kl().mean()
        _update(opt, sched, loss, losses, step, cfg.vae_steps, "bootstrap vae", log)
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def set_scaling_factor(teacher: SD3OneStepTeacher, hq: Tensor, batch: int = 16) -> float:
    """SD convention: scale latents to unit variance (scaling_factor = 1 / std of the data's latents)."""
    z = torch.cat([teacher.vae.encode(hq[i : i + batch] * 2 - 1).latent_dist.mean for i in range(0, len(hq), batch)])
    sf = float(1.0 / z.std().clamp_min(1e-6))
    teacher.vae.register_to_config(scaling_factor=sf)
    teacher.convention = LatentConvention(sf, 0.0, teacher.convention.mode)
    return sf


@torch.no_grad()
def val_psnr(teacher, z_l: Tensor, hq: Tensor, batch: int = 8) -> float:
    """Mean PSNR-Y of the teacher's restoration of latents ``z_l`` against ``hq`` (NaN for none)."""
    from srcompress.models.metrics import psnr_y

    if len(z_l) == 0:
        return float("nan")
    return float(torch.cat([psnr_y(teacher.decode(teacher.restore_latent(z_l[i : i + batch])), hq[i : i + batch])
                            for i in range(0, len(z_l), batch)]).mean())


def validate(net: torch.nn.Module, teacher, z_val: Tensor, hq_val: Tensor, step: int, history: list,
             best: dict) -> dict:
    """Validation PSNR-Y of the teacher with ``net`` in eval mode, appended to ``history``; the new best (with a
    copy of ``net``'s weights) if it beats ``best``, else ``best``."""
    net.eval()
    p = val_psnr(teacher, z_val, hq_val)
    history.append((step, p))
    net.train()
    return {"step": step, "psnr": p, "state": copy.deepcopy(net.state_dict())} if p > best["psnr"] else best


def resume_trainer(resume: dict, opt, sched, g: torch.Generator, log: Callable[[str], None], name: str,
                   total: int) -> tuple[dict, list[float], int, list[tuple]]:
    """Optimiser, schedule and generator back to a checkpoint's state; its (best, losses, step, val history)."""
    opt.load_state_dict(resume["optimizer"])
    sched.load_state_dict(resume["scheduler"])
    g.set_state(resume["rng"])
    start = int(resume["step"])
    log(f"{name}: resumed at step {start}/{total}")
    return resume["best"], list(resume["losses"]), start, [tuple(h) for h in resume.get("val_history", [])]


def train_restorer(teacher: SD3OneStepTeacher, lq: Tensor, hq: Tensor, cfg: BootstrapConfig, g: torch.Generator,
                   log: Callable[[str], None], checkpoint: Callable[[dict], None] | None = None,
                   resume: dict | None = None) -> tuple[list[float], dict]:
    """Phase 2 of the SD3-style teacher: ``MSE(v, z_L − z_H)`` (+ the seam and pixel terms when weighted), from
    a zero ``proj_out`` (the identity); see ``fit_one_step``."""
    tr = teacher.backbone
    torch.nn.init.zeros_(tr.proj_out.weight)
    torch.nn.init.zeros_(tr.proj_out.bias)
    trained = {"restorer": tr}
    if cfg.pixel_weight > 0:
        trained["decoder"] = teacher.vae.decoder
    f = teacher.latent_factor

    def loss_fn(a: Tensor, b: Tensor, y: Callable[[], Tensor]) -> Tensor:
        v = teacher.velocity(a)
        loss = cfg.latent_weight * F.mse_loss(v, a - b)
        if cfg.boundary_weight > 0:  # x0 = a − v against b, at the seams of the transformer's patches
            loss = loss + cfg.boundary_weight * boundary_loss(a - v, b, tr.config.patch_size)
        if cfg.pixel_weight > 0:
            loss = loss + cfg.pixel_weight * (teacher.decode(a - v) - y()).abs().mean()
        return loss

    return fit_one_step(teacher, trained, loss_fn, lq, hq, cfg, g, log, checkpoint, resume)


def fit_one_step(teacher, trained: dict[str, torch.nn.Module], loss_fn: Callable[[Tensor, Tensor, Callable[[], Tensor]], Tensor],
                 lq: Tensor, hq: Tensor, cfg: BootstrapConfig, g: torch.Generator, log: Callable[[str], None],
                 checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
                 name: str = "bootstrap restorer") -> tuple[list[float], dict]:
    """Phase 2 of a one-step teacher on random latent tiles of the training pairs: ``loss_fn(z_L tile, z_H
    tile, hq_tile)`` (the last a thunk: the HQ pixels of the tile) minimised over the modules ``trained``
    (``restorer`` first: the one validated and kept); keeps the checkpoint with the best validation PSNR-Y (step
    0 — where the caller's zero-initialised output starts, the identity — included), so training can only
    improve on where it started.

    ``checkpoint(state)`` is called every ``cfg.checkpoint_every`` steps with everything needed to continue
    (weights, optimiser and schedule, the generator's state, the split, the best state so far); ``resume``
    takes such a state and continues exactly where it stopped."""
    net = trained["restorer"]
    perm = resume["perm"] if resume else torch.randperm(len(lq), generator=g)
    n_val = int(round(cfg.val_fraction * len(lq))) if len(lq) > 1 else 0
    val, train = perm[:n_val], perm[n_val:]
    with torch.no_grad():
        z_l = torch.cat([teacher.encode(lq[i : i + 8]) for i in range(0, len(lq), 8)])
        z_h = torch.cat([teacher.encode(hq[i : i + 8]) for i in range(0, len(hq), 8)])
    for m in trained.values():
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW([p for m in trained.values() for p in m.parameters()], cfg.restorer_lr, weight_decay=0.0)
    sched = _one_cycle(opt, cfg.restorer_lr, cfg.restorer_steps)
    f = teacher.latent_factor
    t = min(cfg.tile, z_l.shape[-1], z_l.shape[-2])
    start, losses = 0, []
    if resume:
        for key, m in trained.items():
            m.load_state_dict(resume[key])
        best, losses, start, history = resume_trainer(resume, opt, sched, g, log, name, cfg.restorer_steps)
    else:
        best = {"step": 0, "psnr": val_psnr(teacher, z_l[val], hq[val]), "state": copy.deepcopy(net.state_dict())}
        history = [(0, best["psnr"])] if n_val else []
    for step in range(start, cfg.restorer_steps):
        idx = train[torch.randint(0, len(train), (cfg.batch_size,), generator=g)]
        i = int(torch.randint(0, z_l.shape[-2] - t + 1, (1,), generator=g))
        j = int(torch.randint(0, z_l.shape[-1] - t + 1, (1,), generator=g))
        a, b = z_l[idx, :, i : i + t, j : j + t], z_h[idx, :, i : i + t, j : j + t]
        loss = loss_fn(a, b, lambda: hq[idx, :, i * f : (i + t) * f, j * f : (j + t) * f])
        _update(opt, sched, loss, losses, step, cfg.restorer_steps, name, log)
        if n_val and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.restorer_steps):
            best = validate(net, teacher, z_l[val], hq[val], step + 1, history, best)
        if checkpoint and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < cfg.restorer_steps:
            checkpoint({"step": step + 1, **{k: m.state_dict() for k, m in trained.items()},
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": g.get_state(),
                        "perm": perm, "best": best, "losses": losses, "val_history": history})
    if n_val:
        net.load_state_dict(best["state"])
        log(f"{name}: kept step {best['step']} (validation PSNR-Y {best['psnr']:.3f} dB)")
    teacher.eval().requires_grad_(False)
    return losses, {"best_step": best["step"], "val_psnr_y": best["psnr"], "val_pairs": n_val,
                    "val_history": history}


def run_phases(teacher, lq: Tensor, hq: Tensor, cfg: BootstrapConfig, g: torch.Generator,
               log: Callable[[str], None], checkpoint: Callable[[dict], None] | None, resume: dict | None,
               phase2: Callable[[Callable[[dict], None] | None], tuple[list[float], dict]]) -> dict:
    """Phases 0–1 (the VAE: init, fine-tune, SD's scaling convention) of any bootstrap teacher, then
    ``phase2(save)`` — the backbone's training, given the checkpoint callback (None without ``checkpoint``),
    returning its losses and selection. A resumed run skips the VAE phase (its result is in the checkpoint).
    Returns the stats, with the training curves under ``curves``."""
    t0 = time.perf_counter()
    if resume:
        teacher.vae.load_state_dict(resume["vae"])
        vae_losses = list(resume["vae_losses"])
    else:
        vae_losses = []  # the linear decoder fit's MSE (pca), then the fine-tune's loss
        if cfg.vae_init == "pca":
            vae_losses += build_pca_vae(teacher.vae, torch.cat([lq, hq]) * 2 - 1, cfg.vae_linear_steps,
                                        cfg.vae_linear_lr, cfg.batch_size, cfg.vae_crop, g, log)
        if cfg.vae_steps:
            vae_losses += train_vae(teacher, torch.cat([lq, hq]), cfg, g, log)
    t_vae = time.perf_counter() - t0
    sf = set_scaling_factor(teacher, hq)

    def save(state: dict) -> None:
        checkpoint({**state, "vae": teacher.vae.state_dict(), "vae_losses": vae_losses})

    rest_losses, sel = phase2(save if checkpoint else None)
    total = time.perf_counter() - t0
    stats = {"seconds_vae": t_vae, "seconds_restorer": total - t_vae, "seconds_total": total, "scaling_factor": sf,
             "vae_loss_final": sum(vae_losses[-50:]) / max(1, len(vae_losses[-50:])),
             "restorer_loss_final": sum(rest_losses[-50:]) / max(1, len(rest_losses[-50:])),
             "train_pairs": len(lq), **sel}
    # the training curves, for the step's plots (not metrics: lists); stats keeps plain numbers
    stats["curves"] = {"vae_loss": vae_losses, "restorer_loss": rest_losses,
                       "val_psnr_y": [list(h) for h in stats.pop("val_history")]}
    return stats


def train_tiny_teacher(lq: Tensor, hq: Tensor, cfg: BootstrapConfig, log: Callable[[str], None] = print,
                       device: torch.device | str = "cpu", checkpoint: Callable[[dict], None] | None = None,
                       resume: dict | None = None) -> tuple[SD3OneStepTeacher, dict]:
    """Build and train the tiny teacher on ``device``. ``lq`` is already at HQ size; both (N, 3, H, W) in [0, 1].

    Random draws (batches, crops, augmentation) come from one CPU generator, so the draws are the same on
    every device. ``checkpoint`` / ``resume``: see ``train_restorer``; a resumed run skips the VAE phase (its
    result is in the checkpoint) and ends with the same weights as an uninterrupted one."""
    if lq.shape != hq.shape:
        raise ValueError(f"LQ {tuple(lq.shape)} must be brought to the HQ size {tuple(hq.shape)} first")
    g = torch.Generator().manual_seed(cfg.seed)
    teacher = tiny_sd3_teacher(seed=cfg.seed, num_layers=cfg.num_layers, latent_channels=cfg.latent_channels,
                               head_dim=cfg.head_dim, heads=cfg.heads, text_dim=cfg.text_dim,
                               pooled_dim=cfg.pooled_dim, prompt_len=cfg.prompt_len,
                               vae_channels=tuple(cfg.vae_channels), vae_norm_groups=cfg.vae_norm_groups,
                               patch_size=cfg.patch_size, tile=cfg.tile, tile_overlap=cfg.tile_overlap,
                               vae_identity=cfg.vae_init == "identity", vae_attention=cfg.vae_attention).to(device)
    lq, hq = lq.to(device), hq.to(device)
    stats = run_phases(teacher, lq, hq, cfg, g, log, checkpoint, resume,
                       lambda save: train_restorer(teacher, lq, hq, cfg, g, log, save, resume))
    return teacher, stats
