"""Train the tiny multi-step teacher of ``configs/tiny-multistep.yaml`` (StableSR-style, LQ latent concatenated).

0–1. **VAE**: the one-step bootstrap's recipe unchanged (``vae_init``, ``vae_steps``; ``bootstrap.py``), and the
   SD scaling convention (1 / std of the HQ latents).
2. **Denoiser** (``UNet2DConditionModel``, fixed prompt embedding): diffusers' standard training — a timestep
   drawn uniformly from the 1000 training steps, ``z_t = √ᾱ_t z_H + √(1−ᾱ_t) ε``, the UNet sees
   ``cat[z_t, z_L]`` and is trained with MSE on its parameterisation's own target (ε, v or x0), one-cycle LR,
   on random latent tiles. Validation samples the *whole trajectory* (``steps`` steps of the configured
   scheduler) on a few training pairs held back, and the best checkpoint is kept — as for the one-step
   teacher, but a sampler's quality only shows at the end of its trajectory.

    teacher, stats = train_tiny_multistep(lq, hq, cfg, log=print)   # lq already at HQ size, both in [0, 1]
"""

from __future__ import annotations

from typing import Callable

import torch

from srcompress.models.teachers.bootstrap import resume_trainer, run_phases, validate
from srcompress.models.teachers.bootstrap_config import BootstrapConfig
from srcompress.models.teachers.multistep import MultiStepTeacher, residual_scale
from srcompress.models.teachers.optim import one_cycle, update
from srcompress.models.teachers.tiny import tiny_multistep_teacher

Tensor = torch.Tensor


def target(teacher: MultiStepTeacher, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """The training target of the scheduler's parameterisation (diffusers' ``get_velocity`` for v)."""
    kind = teacher.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return z0
    if kind == "v_prediction":
        return teacher.scheduler.get_velocity(z0, eps, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def train_denoiser(teacher: MultiStepTeacher, lq: Tensor, hq: Tensor, cfg: BootstrapConfig, g: torch.Generator,
                   log: Callable[[str], None], checkpoint: Callable[[dict], None] | None = None,
                   resume: dict | None = None) -> tuple[list[float], dict]:
    """Phase 2; checkpoint / resume as ``bootstrap.train_restorer`` (everything needed to continue exactly)."""
    ms = cfg.multistep
    unet = teacher.unet
    perm = resume["perm"] if resume else torch.randperm(len(lq), generator=g)
    n_val = min(ms.val_pairs, int(round(cfg.val_fraction * len(lq)))) if len(lq) > 1 else 0
    val, train = perm[:n_val], perm[n_val:]
    with torch.no_grad():
        z_l = torch.cat([teacher.encode(lq[i : i + 8]) for i in range(0, len(lq), 8)])
        z_h = torch.cat([teacher.encode(hq[i : i + 8]) for i in range(0, len(hq), 8)])
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), cfg.restorer_lr, weight_decay=0.0)
    sched = one_cycle(opt, cfg.restorer_lr, cfg.restorer_steps)
    t_size = min(cfg.tile, z_l.shape[-1], z_l.shape[-2])
    n_train = teacher.train_timesteps
    start, losses, history = 0, [], []
    best = {"step": -1, "psnr": float("-inf"), "state": None}
    if resume:
        unet.load_state_dict(resume["unet"])
        best, losses, start, history = resume_trainer(resume, opt, sched, g, log, "bootstrap denoiser",
                                                      cfg.restorer_steps)
    for step in range(start, cfg.restorer_steps):
        idx = train[torch.randint(0, len(train), (cfg.batch_size,), generator=g)]
        i = int(torch.randint(0, z_l.shape[-2] - t_size + 1, (1,), generator=g))
        j = int(torch.randint(0, z_l.shape[-1] - t_size + 1, (1,), generator=g))
        a, b = z_l[idx, :, i : i + t_size, j : j + t_size], z_h[idx, :, i : i + t_size, j : j + t_size]
        t = torch.randint(0, max(1, int(round(ms.t_range * n_train))), (len(idx),), generator=g)
        eps = torch.randn(b.shape, generator=g).to(b)
        z_t = teacher.scheduler.add_noise(b, eps, t)
        out = teacher.model_output(z_t, t.to(b.device), a)
        err = (out - target(teacher, b, eps, t.to(b.device))) ** 2
        if teacher.lq_residual and teacher.residual_std > 0:  # EDM's weighting: the UNet's own target at unit scale
            err = err / residual_scale(teacher.alphas_cumprod[t].view(-1, 1, 1, 1).to(b), teacher.residual_std) ** 2
        loss = err.mean()
        update(opt, sched, loss, losses, step, cfg.restorer_steps, "bootstrap denoiser", log)
        last = step + 1 == cfg.restorer_steps
        if n_val and ((step + 1) % cfg.eval_every == 0 or last):
            best = validate(unet, teacher, z_l[val], hq[val], step + 1, history, best)
        if checkpoint and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and not last:
            checkpoint({"step": step + 1, "unet": unet.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "rng": g.get_state(), "perm": perm, "best": best,
                        "losses": losses, "val_history": history})
    if n_val and best["state"] is not None:
        unet.load_state_dict(best["state"])
        log(f"bootstrap denoiser: kept step {best['step']} (validation PSNR-Y {best['psnr']:.3f} dB, "
            f"{teacher.steps}-step {type(teacher.scheduler).__name__})")
    teacher.eval().requires_grad_(False)
    return losses, {"best_step": best["step"], "val_psnr_y": best["psnr"], "val_pairs": n_val,
                    "val_history": history}


def train_tiny_multistep(lq: Tensor, hq: Tensor, cfg: BootstrapConfig, log: Callable[[str], None] = print,
                         device: torch.device | str = "cpu", checkpoint: Callable[[dict], None] | None = None,
                         resume: dict | None = None) -> tuple[MultiStepTeacher, dict]:
    """Build and train the tiny multi-step teacher on ``device`` (same contract as ``train_tiny_teacher``)."""
    if lq.shape != hq.shape:
        raise ValueError(f"LQ {tuple(lq.shape)} must be brought to the HQ size {tuple(hq.shape)} first")
    ms = cfg.multistep
    g = torch.Generator().manual_seed(cfg.seed)
    teacher = tiny_multistep_teacher(
        seed=cfg.seed, latent_channels=cfg.latent_channels, cross_dim=cfg.text_dim, prompt_len=cfg.prompt_len,
        steps=ms.steps, scheduler=ms.scheduler, prediction_type=ms.prediction_type,
        block_out_channels=tuple(ms.unet_channels), norm_groups=ms.norm_groups, vae_blocks=tuple(cfg.vae_channels),
        vae_norm_groups=cfg.vae_norm_groups, vae_attention=cfg.vae_attention, tile=cfg.tile,
        tile_overlap=cfg.tile_overlap, strength=ms.strength, lq_residual=ms.lq_residual).to(device)
    if ms.lq_residual:  # x0 = z_LQ + UNet(…) = z_LQ at the start: training can only move away from bicubic
        torch.nn.init.zeros_(teacher.unet.conv_out.weight)
        torch.nn.init.zeros_(teacher.unet.conv_out.bias)
    lq, hq = lq.to(device), hq.to(device)

    def phase2(save):
        if ms.lq_residual:  # σ_d of the residual prior: the spread of z_H − z_L over the training pairs
            with torch.no_grad():
                d = torch.cat([teacher.encode(hq[i : i + 8]) - teacher.encode(lq[i : i + 8])
                               for i in range(0, len(hq), 8)])
            teacher.residual_std = float(d.std())
        return train_denoiser(teacher, lq, hq, cfg, g, log, save, resume)

    stats = run_phases(teacher, lq, hq, cfg, g, log, checkpoint, resume, phase2)
    return teacher, stats
