"""Tiny teachers built from config: the same diffusers classes as real teachers, small enough for a CPU.

The embedded default trains one of these (``bootstrap_teacher``) so every later step exercises the real
SD3 / UNet code paths. Tests build them with random weights.
"""

from __future__ import annotations

import math

import torch

from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.sd3 import SD3OneStepTeacher
from srcompress.models.teachers.unet import UNetOneStepTeacher


def tiny_vae(latent_channels: int = 16, block_out_channels: tuple[int, ...] = (16, 32, 32), norm_groups: int = 8,
             scaling_factor: float = 1.0, shift_factor: float | None = None, attention: bool = False):
    """An ``AutoencoderKL`` with 2**(len(blocks)-1) downsampling; mid-block self-attention in both halves only
    with ``attention`` (SD3's VAE has it; TinySR's compression removes it)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=norm_groups,
                         mid_block_add_attention=attention, scaling_factor=scaling_factor, shift_factor=shift_factor)


def identity_init_vae(vae, const: float = 100.0, shift: float = 20.0) -> None:
    """Set a one-block (no down/upsampling) ``AutoencoderKL`` to an exact identity map: latent[:3] = RGB.

    Why: a from-scratch tiny VAE spends the whole CPU budget learning to be lossless (measured: ~30 dB after
    1500 steps), and a lossy VAE caps the teacher below bicubic. The construction, in every block:
    resnets' second convs are zeroed (so each resnet is its shortcut); ``conv_in`` emits [x, −x, const…];
    with one GroupNorm group the per-sample mean is exactly the constants' (x and −x cancel) and the variance
    is constant to ~1e-4; the norm's affine moves the data channels to SiLU's near-linear region (≈ ``shift``)
    and ``conv_out`` takes the symmetric difference of the x and −x channels, which cancels SiLU's curvature.
    The log-variance is pinned at −30 (std ≈ 3e-7). Requires ``norm_num_groups == 1`` and width ≥ 8.
    """
    from diffusers.models.resnet import ResnetBlock2D

    cfg = vae.config
    width, lat = cfg.block_out_channels[0], cfg.latent_channels
    if len(cfg.block_out_channels) != 1 or cfg.norm_num_groups != 1 or width < 8 or lat < 3:
        raise ValueError("identity init needs one VAE block, norm_num_groups=1, width >= 8, latent_channels >= 3")
    mu = (width - 6) * const / width
    s = math.sqrt((width - 6) * const**2 / width - mu**2 + 1e-6)
    sig = 1.0 / (1.0 + math.exp(-shift))
    a_slope = sig * (1 + shift * (1 - sig))  # SiLU'(shift)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()

        def front(conv):
            conv.weight.zero_()
            conv.bias.zero_()
            c = conv.weight.shape[-1] // 2
            for k in range(3):
                conv.weight[k, k, c, c], conv.weight[3 + k, k, c, c] = 1.0, -1.0
            conv.bias[6:] = const

        def norm(gn):
            gn.weight.zero_()
            gn.bias.zero_()
            gn.weight[:6] = 1.0
            gn.bias[:6] = shift + mu / s

        def back(conv):
            conv.weight.zero_()
            conv.bias.zero_()
            c = conv.weight.shape[-1] // 2
            for k in range(3):
                conv.weight[k, k, c, c], conv.weight[k, 3 + k, c, c] = s / (2 * a_slope), -s / (2 * a_slope)

        for part in (vae.encoder, vae.decoder):
            front(part.conv_in)
            norm(part.conv_norm_out)
            back(part.conv_out)
        vae.encoder.conv_out.bias[lat:] = -30.0
        for q in (vae.quant_conv, vae.post_quant_conv):
            if q is not None:
                q.weight.zero_()
                q.bias.zero_()
                for i in range(q.weight.shape[0]):
                    q.weight[i, i, 0, 0] = 1.0


def tiny_sd3_teacher(seed: int = 0, num_layers: int = 4, latent_channels: int = 16, head_dim: int = 16,
                     heads: int = 4, text_dim: int = 32, pooled_dim: int = 32, prompt_len: int = 8,
                     vae_channels: tuple[int, ...] = (16, 32, 32), latent_mode: str = "mean",
                     scaling_factor: float = 1.0, vae_norm_groups: int = 8, patch_size: int = 2,
                     tile: int | None = None, tile_overlap: int = 8, vae_identity: bool = False,
                     vae_attention: bool = False) -> SD3OneStepTeacher:
    from diffusers import SD3Transformer2DModel

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_vae(latent_channels, vae_channels, norm_groups=vae_norm_groups, scaling_factor=scaling_factor,
                   attention=vae_attention)
    if vae_identity:
        identity_init_vae(vae)
    # With tiling, the positional embedding covers exactly one tile (TinySR's fixed 64-latent pos_embed).
    tr = SD3Transformer2DModel(sample_size=tile or 32, patch_size=patch_size, in_channels=latent_channels,
                               num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=heads,
                               joint_attention_dim=text_dim, caption_projection_dim=head_dim * heads,
                               pooled_projection_dim=pooled_dim, out_channels=latent_channels,
                               pos_embed_max_size=(tile // patch_size) if tile else 64)
    # The fixed "default prompt" embedding: a stand-in for the text-encoder output a real teacher ships.
    emb = torch.randn((1, prompt_len, text_dim), generator=g)
    pooled = torch.randn((1, pooled_dim), generator=g)
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, latent_mode)  # type: ignore[arg-type]
    return SD3OneStepTeacher(vae, tr, emb, pooled, conv, tile=tile, tile_overlap=tile_overlap)


def sd_unet(in_channels: int, out_channels: int, block_out_channels: tuple[int, ...], norm_groups: int,
            cross_dim: int, layers_per_block: int = 1, sample_size: int = 16, class_embeds: int | None = None):
    """A ``UNet2DConditionModel`` in SD's layout (cross-attention in every stage but the innermost) at any width;
    ``class_embeds``: the x4 upscaler's noise-level class embeddings."""
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                norm_num_groups=norm_groups,
                                down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
                                cross_attention_dim=cross_dim, attention_head_dim=8, num_class_embeds=class_embeds)


def tiny_unet_teacher(seed: int = 0, latent_channels: int = 4, cross_dim: int = 32,
                      prediction_type: str = "epsilon", layers_per_block: int = 1,
                      block_out_channels: tuple[int, ...] = (32, 64), norm_groups: int = 16, prompt_len: int = 8,
                      vae_blocks: tuple[int, ...] = (16, 32, 32), vae_norm_groups: int = 8,
                      vae_attention: bool = False, tile: int | None = None, tile_overlap: int = 8,
                      timestep: int = 999, lq_residual: bool = False) -> UNetOneStepTeacher:
    """An SD-UNet-shaped teacher: SD's layout (cross-attention in every stage but the innermost) at any width.
    ``lq_residual`` (with ``prediction_type="sample"``): the UNet predicts x0 − z_L (the bootstrapped one)."""
    from srcompress.models.teachers.multistep import make_scheduler

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_vae(latent_channels, vae_blocks, norm_groups=vae_norm_groups, scaling_factor=0.18215,
                   attention=vae_attention)
    unet = sd_unet(latent_channels, latent_channels, block_out_channels, norm_groups, cross_dim,
                   layers_per_block=layers_per_block, sample_size=tile or 16)
    sched = make_scheduler("ddpm", prediction_type=prediction_type)  # SD2.1's noise schedule
    emb = torch.randn((1, prompt_len, cross_dim), generator=g)
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, "mean")
    return UNetOneStepTeacher(vae, unet, sched, emb, conv, timestep=timestep, tile=tile, tile_overlap=tile_overlap,
                              lq_residual=lq_residual)


def tiny_multistep_teacher(seed: int = 0, latent_channels: int = 4, cross_dim: int = 32, prompt_len: int = 8,
                           steps: int = 10, scheduler: str = "ddim", condition: str = "latent",
                           prediction_type: str = "epsilon", block_out_channels: tuple[int, ...] = (32, 64),
                           norm_groups: int = 16, vae_blocks: tuple[int, ...] = (16, 32, 32),
                           vae_norm_groups: int = 8, vae_attention: bool = False, tile: int | None = None,
                           tile_overlap: int = 8, noise_level: int | None = None, strength: float = 1.0,
                           lq_residual: bool = False, residual_std: float = 0.0):
    """A StableSR / SD-x4-upscaler-shaped multi-step teacher (``MultiStepTeacher``): a UNet over the noisy latent
    concatenated with the LQ condition, SD2.1's noise schedule, ``steps`` steps of ``scheduler`` (ddim | ddpm |
    dpm). ``condition="pixels"`` with ``noise_level`` is the x4 upscaler's layout (LR pixels + noise-level
    class labels, 1000 class embeddings)."""
    from srcompress.models.teachers.multistep import MultiStepTeacher, make_scheduler

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = tiny_vae(latent_channels, vae_blocks, norm_groups=vae_norm_groups, scaling_factor=0.18215,
                   attention=vae_attention)
    cond = latent_channels if condition == "latent" else 3
    unet = sd_unet(latent_channels + cond, latent_channels, block_out_channels, norm_groups, cross_dim,
                   sample_size=tile or 16, class_embeds=1000 if noise_level is not None else None)
    sched = make_scheduler(scheduler, prediction_type=prediction_type)
    low = make_scheduler("ddpm") if noise_level is not None else None
    emb = torch.randn((1, prompt_len, cross_dim), generator=g)
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, "mean")
    return MultiStepTeacher(vae, unet, sched, emb, conv, steps=steps, condition=condition,  # type: ignore[arg-type]
                            noise_level=noise_level, low_res_scheduler=low, seed=seed, tile=tile,
                            tile_overlap=tile_overlap, strength=strength, lq_residual=lq_residual,
                            residual_std=residual_std)
