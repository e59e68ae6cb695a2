"""The tiny VAE (TinySR ``models/vae/tinyvae.py``, reimplemented): diffusers' TAESD-style ``AutoencoderTiny``
— no attention, ReLU blocks, nearest upsampling — with every k×k convolution depthwise-separable
(depthwise k×k, then pointwise 1×1), trained to the teacher's VAE (docs/methods.md §8.3).

    vae = tiny_vae_for(teacher, width=64)                 # latent channels and factor of the teacher's VAE
    train_tiny_vae(vae, teacher, images, steps=300)       # encoder → teacher latents, decoder → teacher pixels
    z = vae.encode(2 * x - 1).latents                     # already the teacher's *scaled* latents
    x = (vae.decode(z).sample + 1) / 2

Convention (ours, recorded in the student folder): the tiny encoder outputs the teacher's scaled latents
``(E(2x−1) − shift)·scale`` directly and the decoder takes them, so no scaling factor is applied around it.
``SeparableAutoencoderTiny`` is a diffusers ``ModelMixin``: ``SeparableAutoencoderTiny.from_pretrained``
loads a saved one (``separable=False`` is the stock ``AutoencoderTiny`` layout).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import register_to_config
from torch import nn

Tensor = torch.Tensor


class SeparableConv2d(nn.Module):
    """Depthwise k×k (same stride/padding) then pointwise 1×1: ~k² fewer MACs than a dense k×k conv."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.depthwise = nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding,
                                   groups=conv.in_channels, bias=False)
        self.pointwise = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def _separate(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and max(child.kernel_size) > 1 and child.groups == 1:
            setattr(module, name, SeparableConv2d(child))
        else:
            _separate(child)


class SeparableAutoencoderTiny(AutoencoderTiny):
    """``AutoencoderTiny`` whose k×k convolutions are depthwise-separable when ``separable`` (TinySR)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                 decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64), act_fn: str = "relu",
                 upsample_fn: str = "nearest", latent_channels: int = 16, upsampling_scaling_factor: int = 2,
                 num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3), num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
                 latent_magnitude: int = 3, latent_shift: float = 0.5, force_upcast: bool = False,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0, separable: bool = True):
        super().__init__(in_channels=in_channels, out_channels=out_channels,
                         encoder_block_out_channels=encoder_block_out_channels,
                         decoder_block_out_channels=decoder_block_out_channels, act_fn=act_fn,
                         upsample_fn=upsample_fn, latent_channels=latent_channels,
                         upsampling_scaling_factor=upsampling_scaling_factor, num_encoder_blocks=num_encoder_blocks,
                         num_decoder_blocks=num_decoder_blocks, latent_magnitude=latent_magnitude,
                         latent_shift=latent_shift, force_upcast=force_upcast, scaling_factor=scaling_factor,
                         shift_factor=shift_factor)
        if separable:
            _separate(self)


def tiny_vae_config(latent_channels: int, factor: int, width: int = 64, blocks: int = 3,
                    separable: bool = True) -> dict:
    """TAESD layout for a latent factor of 2**k: k+1 stages (TAESD/TinySR at factor 8: (1,3,3,3) / (3,3,3,1))."""
    k = int(round(math.log2(factor)))
    if 2**k != factor:
        raise ValueError(f"tiny VAE: latent factor {factor} is not a power of two")
    stages = k + 1
    return {"encoder_block_out_channels": (width,) * stages, "decoder_block_out_channels": (width,) * stages,
            "latent_channels": latent_channels, "num_encoder_blocks": (1,) + (blocks,) * k,
            "num_decoder_blocks": (blocks,) * k + (1,), "separable": separable}


def tiny_vae_for(teacher, width: int = 64, blocks: int = 3, separable: bool = True) -> SeparableAutoencoderTiny:
    """A tiny VAE with the teacher's latent channels and factor."""
    cfg = tiny_vae_config(int(teacher.vae.config.latent_channels), teacher.latent_factor, width, blocks, separable)
    return SeparableAutoencoderTiny(**cfg)


def train_tiny_vae(vae: nn.Module, teacher, images: Tensor, steps: int, lr: float = 1e-3, batch: int = 8,
                   crop: int = 64, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Fit the tiny encoder to the teacher's latents and the tiny decoder to the teacher's decoded pixels, on
    random crops of ``images`` ((N, 3, H, W) in [0, 1], on the teacher's device). Returns loss figures."""
    g = torch.Generator().manual_seed(seed)
    f = teacher.latent_factor
    crop = max(f, min(crop, images.shape[-1], images.shape[-2]) // f * f)
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    enc_hist, dec_hist = [], []
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        i = int(torch.randint(0, images.shape[-2] - crop + 1, (1,), generator=g))
        j = int(torch.randint(0, images.shape[-1] - crop + 1, (1,), generator=g))
        x = images[idx, :, i : i + crop, j : j + crop]
        with torch.no_grad():
            z_t = teacher.encode(x)
            x_t = teacher.decode(z_t) * 2 - 1
        enc = F.l1_loss(vae.encode(x * 2 - 1).latents, z_t)
        dec = F.l1_loss(vae.decode(z_t).sample, x_t)
        opt.zero_grad(set_to_none=True)
        (enc + dec).backward()
        opt.step()
        sched.step()
        enc_hist.append(enc.item())
        dec_hist.append(dec.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"tiny VAE {step + 1}/{steps}: encoder L1 {sum(enc_hist[-20:]) / len(enc_hist[-20:]):.4f}, "
                f"decoder L1 {sum(dec_hist[-20:]) / len(dec_hist[-20:]):.4f}")
    vae.eval().requires_grad_(False)
    tail = max(1, min(20, steps))
    return {"encoder_l1": sum(enc_hist[-tail:]) / tail if enc_hist else None,
            "decoder_l1": sum(dec_hist[-tail:]) / tail if dec_hist else None, "steps": steps}
