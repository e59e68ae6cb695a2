"""SD-UNet one-step teacher (OSEDiff style): ε-prediction, one DDPM step at t = 999.

OSEDiff (``cswry/OSEDiff``, ``osediff.py``): ``ε = UNet(z_L, 999, text)``, then ``DDPMScheduler.step`` with a
one-step schedule, which returns ``z0 = (z_L − √(1−ᾱ_t) ε) / √ᾱ_t``. ``v_prediction`` schedulers (SD2.1-768)
use ``z0 = √ᾱ_t z_L − √(1−ᾱ_t) v``. The prompt embedding is fixed (OSEDiff uses DAPE tags per image; a
compression pipeline distils one fixed conditioning, as TinySR does).
"""

from __future__ import annotations

import torch
from torch import nn

from srcompress.models.teachers.base import LatentConvention, OneStepTeacher

Tensor = torch.Tensor


class UNetOneStepTeacher(OneStepTeacher):
    kind = "unet"

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler, prompt_embeds: Tensor,
                 convention: LatentConvention, timestep: int = 999, tile: int | None = None,
                 tile_overlap: int = 8, lq_residual: bool = False, residual_std: float = 0.0):
        super().__init__(vae, unet, convention, tile, tile_overlap)
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} must be (1, L, "
                             f"cross_attention_dim={unet.config.cross_attention_dim})")
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.scheduler = scheduler
        self.timestep = int(timestep)
        alphas = scheduler.alphas_cumprod
        if not 0 <= self.timestep < len(alphas):
            raise ValueError(f"timestep {timestep} outside the scheduler's {len(alphas)} training steps")
        self.alpha_bar = float(alphas[self.timestep])
        self.prediction_type = scheduler.config.prediction_type
        # A multi-step teacher's UNet (models/teachers/multistep.py) takes cat[z_t, z_L]: its one-step form feeds
        # z_L as z_t too (OSEDiff's one step starts from the LQ latent where the sampler starts from noise)
        self.concat_lq = unet.config.in_channels == 2 * unet.config.out_channels
        # … and one trained with lq_residual predicts x0 − z_L (models/teachers/multistep.py: residual_x0, with
        # z_t = z_L; the bootstrapped one-step UNet of configs/tiny-unet.yaml too, over z_L alone)
        self.lq_residual, self.residual_std = bool(lq_residual), float(residual_std)
        if self.lq_residual and self.prediction_type != "sample":
            raise ValueError("lq_residual needs prediction_type 'sample' (the UNet predicts x0 − z_L)")

    @property
    def unet(self) -> nn.Module:
        return self.backbone

    def restore_tile(self, z_lq: Tensor) -> Tensor:
        b = z_lq.shape[0]
        x = torch.cat([z_lq, z_lq], dim=1) if self.concat_lq else z_lq
        out = self.backbone(x, torch.full((b,), self.timestep, dtype=torch.long, device=z_lq.device),
                            encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1)).sample
        a, s = self.alpha_bar**0.5, (1 - self.alpha_bar) ** 0.5
        if self.prediction_type == "epsilon":
            return (z_lq - s * out) / a
        if self.prediction_type == "v_prediction":
            return a * z_lq - s * out
        if self.prediction_type == "sample":
            if not self.lq_residual:
                return out
            if not self.concat_lq:  # the one-step UNet over z_L alone: x0 = z_L + σ_d · UNet (exact identity at 0)
                return z_lq + (self.residual_std if self.residual_std > 0 else 1.0) * out
            from srcompress.models.teachers.multistep import residual_x0

            return residual_x0(out, z_lq, z_lq, torch.tensor(self.alpha_bar, dtype=z_lq.dtype, device=z_lq.device),
                               self.residual_std)
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def describe(self) -> dict:
        return super().describe() | {"lq_residual": self.lq_residual, "residual_std": self.residual_std}

    def prunable_blocks(self) -> list[tuple[str, nn.Module]]:
        """Resnet and attention units inside down / mid / up blocks, in execution order — those a mask can
        turn into the identity: every attention (residual, same shape), and resnets that keep their input's
        width. A resnet that changes the width (the first of a wider down block) or that takes a skip connection
        (every up-block resnet: its input is the concatenation) has no identity to fall back to, so it is not a
        prunable unit (masking it would silently do nothing)."""
        return prunable_units(self.backbone)


def prunable_units(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """A ``UNet2DConditionModel``'s units a depth mask can remove (see ``UNetOneStepTeacher.prunable_blocks``);
    the student surgery (models/student/unet_surgery.py) accepts exactly these names."""
    out: list[tuple[str, nn.Module]] = []

    def identity_able(r: nn.Module) -> bool:
        return (getattr(r, "in_channels", None) == getattr(r, "out_channels", None)
                and not getattr(r, "up", False) and not getattr(r, "down", False))

    def units(prefix: str, blk: nn.Module) -> None:
        resnets = list(getattr(blk, "resnets", []))
        attns = list(getattr(blk, "attentions", None) or [])
        for j, r in enumerate(resnets):
            if identity_able(r):
                out.append((f"{prefix}.resnets.{j}", r))
            # mid block: resnet0, attn0, resnet1 — attention j follows resnet j (and j+1 for mid)
            if j < len(attns):
                out.append((f"{prefix}.attentions.{j}", attns[j]))

    for i, blk in enumerate(unet.down_blocks):
        units(f"down_blocks.{i}", blk)
    if unet.mid_block is not None:
        units("mid_block", unet.mid_block)
    for i, blk in enumerate(unet.up_blocks):
        units(f"up_blocks.{i}", blk)
    return out
