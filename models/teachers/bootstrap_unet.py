"""Train the tiny one-step SD-UNet teacher of ``configs/tiny-unet.yaml`` (OSEDiff's form), on a CPU.

0–1. **VAE**: the one-step bootstrap's recipe unchanged (``vae_init``, ``vae_steps``; ``bootstrap.py``) and SD's
   scaling convention (1 / std of the HQ latents).
2. **One-step restorer** (``UNet2DConditionModel`` in SD's layout, one pass at ``unet.timestep``, the fixed
   prompt embedding): OSEDiff's one step, ``x0 = f(UNet(z_L, t))``. OSEDiff fine-tunes SD2.1 with
   ε-prediction, where ``x0 = (z_L − √(1−ᾱ) ε) / √ᾱ`` amplifies the UNet's error 1/√ᾱ ≈ 15× at t = 999 — fine
   for a pretrained UNet, hopeless for one trained from zero in minutes. The bootstrapped one predicts the
   HQ − LQ residual instead (``lq_residual``: ``x0 = z_L + σ_d · UNet(…)``, σ_d the spread of z_H − z_L over
   the training pairs; ``unet.UNetOneStepTeacher.restore_tile``), from a zero ``conv_out``: training starts
   exactly at the identity (teacher = the LQ through the VAE) and the loss is the MSE of x0 at the UNet's unit
   scale.
   The best checkpoint on a validation split of the training pairs is kept (step 0 included) — the same
   selection as the SD3-style teacher's (``bootstrap.fit_one_step``).

    teacher, stats = train_tiny_unet(lq, hq, cfg, log=print)   # lq already at HQ size, both in [0, 1]
"""

from __future__ import annotations

from typing import Callable

import torch

from srcompress.models.teachers.bootstrap import fit_one_step, run_phases
from srcompress.models.teachers.bootstrap_config import BootstrapConfig
from srcompress.models.teachers.tiny import tiny_unet_teacher
from srcompress.models.teachers.unet import UNetOneStepTeacher

Tensor = torch.Tensor


def train_tiny_unet(lq: Tensor, hq: Tensor, cfg: BootstrapConfig, log: Callable[[str], None] = print,
                    device: torch.device | str = "cpu", checkpoint: Callable[[dict], None] | None = None,
                    resume: dict | None = None) -> tuple[UNetOneStepTeacher, dict]:
    """Build and train the tiny one-step UNet teacher on ``device`` (same contract as ``train_tiny_teacher``)."""
    if lq.shape != hq.shape:
        raise ValueError(f"LQ {tuple(lq.shape)} must be brought to the HQ size {tuple(hq.shape)} first")
    rec = cfg.unet
    g = torch.Generator().manual_seed(cfg.seed)
    teacher = tiny_unet_teacher(
        seed=cfg.seed, latent_channels=cfg.latent_channels, cross_dim=cfg.text_dim, prediction_type="sample",
        block_out_channels=tuple(rec.unet_channels), norm_groups=rec.norm_groups, prompt_len=cfg.prompt_len,
        vae_blocks=tuple(cfg.vae_channels), vae_norm_groups=cfg.vae_norm_groups, vae_attention=cfg.vae_attention,
        tile=cfg.tile, tile_overlap=cfg.tile_overlap, timestep=rec.timestep, lq_residual=True).to(device)
    torch.nn.init.zeros_(teacher.unet.conv_out.weight)  # x0 = z_L at the start: the identity
    torch.nn.init.zeros_(teacher.unet.conv_out.bias)
    lq, hq = lq.to(device), hq.to(device)

    def phase2(save):
        with torch.no_grad():  # σ_d: the spread of the residual the UNet predicts, in the final latent scale
            d = torch.cat([teacher.encode(hq[i : i + 8]) - teacher.encode(lq[i : i + 8]) for i in range(0, len(hq), 8)])
        teacher.residual_std = float(d.std())
        scale = teacher.residual_std if teacher.residual_std > 0 else 1.0  # restore_tile's own fallback

        def loss_fn(a: Tensor, b: Tensor, _hq) -> Tensor:  # x0's error at the UNet's own (unit) scale
            return ((teacher.restore_tile(a) - b) ** 2).mean() / scale**2

        return fit_one_step(teacher, {"restorer": teacher.unet}, loss_fn, lq, hq, cfg, g, log, save, resume)

    stats = run_phases(teacher, lq, hq, cfg, g, log, checkpoint, resume, phase2)
    return teacher, stats
