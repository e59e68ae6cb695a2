"""SD3-transformer one-step teacher (TSD-SR / TinySR style): rectified flow, one step at t = 1000.

TSD-SR (``Microtreei/TSD-SR``, test script) and TinySR (``test/test_tinysr.py``): with σ(t=1000) = 1,
``z0 = z_L − σ·v(z_L, t)``; the conditioning is a fixed prompt embedding (computed once offline with the text
encoders, which srcompress never needs at run time).
"""

from __future__ import annotations

import torch
from torch import nn

from srcompress.models.teachers.base import LatentConvention, OneStepTeacher

Tensor = torch.Tensor


class SD3OneStepTeacher(OneStepTeacher):
    kind = "sd3"

    def __init__(self, vae: nn.Module, transformer: nn.Module, prompt_embeds: Tensor, pooled_prompt_embeds: Tensor,
                 convention: LatentConvention, timestep: float = 1000.0, tile: int | None = None,
                 tile_overlap: int = 8):
        super().__init__(vae, transformer, convention, tile, tile_overlap)
        if prompt_embeds.dim() != 3 or pooled_prompt_embeds.dim() != 2:
            raise ValueError(f"prompt_embeds must be (1, L, D) and pooled (1, P); got "
                             f"{tuple(prompt_embeds.shape)} and {tuple(pooled_prompt_embeds.shape)}")
        cfg = transformer.config
        if prompt_embeds.shape[-1] != cfg.joint_attention_dim or pooled_prompt_embeds.shape[-1] != cfg.pooled_projection_dim:
            raise ValueError(f"prompt embeddings {tuple(prompt_embeds.shape)}/{tuple(pooled_prompt_embeds.shape)} do not "
                             f"match the transformer (joint_attention_dim={cfg.joint_attention_dim}, "
                             f"pooled_projection_dim={cfg.pooled_projection_dim})")
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds, persistent=False)
        self.timestep = float(timestep)

    @property
    def transformer(self) -> nn.Module:
        return self.backbone

    def velocity(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        return self.backbone(hidden_states=z, encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1),
                             pooled_projections=self.pooled_prompt_embeds.expand(b, -1),
                             timestep=torch.full((b,), self.timestep, dtype=z.dtype, device=z.device)).sample

    def restore_tile(self, z_lq: Tensor) -> Tensor:
        sigma = self.timestep / 1000.0  # flow-matching σ of the timestep; 1 at t = 1000
        return z_lq - sigma * self.velocity(z_lq)

    def prunable_blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(self.backbone.transformer_blocks)]
