"""Tiny teachers built from config: the same diffusers classes as real teachers, small enough for a CPU.

The embedded default trains one of these (``bootstrap_teacher``) so every later step exercises the real
SD3 / UNet code paths. Tests build them with random weights.
"""

from __future__ import annotations

import torch

from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.sd3 import SD3OneStepTeacher
from srcompress.models.teachers.unet import UNetOneStepTeacher


def tiny_vae(latent_channels: int = 16, block_out_channels: tuple[int, ...] = (16, 32, 32), norm_groups: int = 8,
             scaling_factor: float = 1.0, shift_factor: float | None = None):
    """An ``AutoencoderKL`` with 2**(len(blocks)-1) downsampling and no mid-block attention."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=norm_groups,
                         mid_block_add_attention=False, scaling_factor=scaling_factor, shift_factor=shift_factor)


def tiny_sd3_teacher(seed: int = 0, num_layers: int = 4, latent_channels: int = 16, head_dim: int = 16,
                     heads: int = 4, text_dim: int = 32, pooled_dim: int = 32, prompt_len: int = 8,
                     vae_channels: tuple[int, ...] = (16, 32, 32), latent_mode: str = "mean",
                     scaling_factor: float = 1.0, vae_norm_groups: int = 8) -> SD3OneStepTeacher:
    from diffusers import SD3Transformer2DModel

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_vae(latent_channels, vae_channels, norm_groups=vae_norm_groups, scaling_factor=scaling_factor)
    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=latent_channels, num_layers=num_layers,
                               attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim,
                               caption_projection_dim=head_dim * heads, pooled_projection_dim=pooled_dim,
                               out_channels=latent_channels, pos_embed_max_size=64)
    # The fixed "default prompt" embedding: a stand-in for the text-encoder output a real teacher ships.
    emb = torch.randn((1, prompt_len, text_dim), generator=g)
    pooled = torch.randn((1, pooled_dim), generator=g)
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, latent_mode)  # type: ignore[arg-type]
    return SD3OneStepTeacher(vae, tr, emb, pooled, conv)


def tiny_unet_teacher(seed: int = 0, latent_channels: int = 4, cross_dim: int = 32,
                      prediction_type: str = "epsilon") -> UNetOneStepTeacher:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_vae(latent_channels, (16, 32, 32), scaling_factor=0.18215)
    unet = UNet2DConditionModel(sample_size=16, in_channels=latent_channels, out_channels=latent_channels,
                                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_dim, attention_head_dim=8)
    # SD2.1's scheduler settings (scaled_linear betas 0.00085 → 0.012 over 1000 steps).
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type=prediction_type, clip_sample=False)
    emb = torch.randn((1, 8, cross_dim), generator=g)
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, "mean")
    return UNetOneStepTeacher(vae, unet, sched, emb, conv)
