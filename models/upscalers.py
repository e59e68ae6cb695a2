"""Anything evaluation can run: LR image in, SR image out — the small "upscaler" protocol.

    up = Bicubic(scale=4)                                   # the baseline every table includes
    up = DiffusionSR(teacher, scale=4, color_fix="wavelet")   # tiles as the teacher does (its teacher.json)
    up = DiffusionSR(teacher, scale=4, tile=64, tile_overlap=8)  # or explicit latent tiles
    sr = up(lr)                                             # (1, 3, h, w) → (1, 3, 4h, 4w), RGB in [0, 1]
    up.describe()                                           # every inference setting, recorded with results

``DiffusionSR`` follows the one-step SR test scripts (docs/methods.md §4): the LR image is upsampled ×scale
with bicubic interpolation, encoded, restored in one step in latent space (Gaussian-blended latent tiles:
by default the model's own tiling — what ``restore_latent`` and so the cached latents use — else explicit
sizes such as TSD-SR/TinySR's 64/8; always capped at the largest input the backbone's positional embedding
allows), decoded (optionally with the VAE's own tiled encode/decode) and colour-fixed against the upsampled
LR. Sample-mode latent conventions (OSEDiff) draw the posterior sample from a CPU generator seeded by
``seed`` on every call, so outputs are reproducible and device-independent. The model stays on its device;
inputs are moved to it and outputs come back on the input's device.

Deviation, on purpose: the papers floor the input to a multiple of 8 (losing up to 7 border pixels); here
the upsampled image is reflect-padded to a multiple of what the model needs and the output cropped back, so
any size works and the SR output always matches the HQ image pixel for pixel.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from srcompress.models.colorfix import color_fix
from srcompress.models.device import module_device
from srcompress.models.metrics import bicubic_to
from srcompress.models.teachers.tiling import tiled

Tensor = torch.Tensor


class Upscaler(Protocol):
    name: str
    scale: int

    def __call__(self, lr: Tensor, size: tuple[int, int] | None = None) -> Tensor: ...
    def describe(self) -> dict: ...


def bicubic_up(lr: Tensor, scale: int, size: tuple[int, int] | None = None) -> Tensor:
    """torch bicubic (a = −0.75, align_corners=False), clamped — the ``sr_bicubic`` convention.

    ``size`` (default: ×scale) equal to the input size means the LQ is already at HR size: returned as is.
    """
    return bicubic_to(lr, tuple(size) if size else (lr.shape[-2] * scale, lr.shape[-1] * scale))


class Bicubic(nn.Module):
    def __init__(self, scale: int = 4):
        super().__init__()
        self.scale, self.name = scale, "bicubic"

    def forward(self, lr: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return bicubic_up(lr, self.scale, size)

    def describe(self) -> dict:
        return {"kind": "bicubic", "scale": self.scale, "interpolation": "torch-bicubic-a-0.75"}


def _backbone_multiple(backbone: nn.Module) -> int:
    """Latent-size multiple the backbone needs: patch size (DiT) or 2^(#downsamplings) (UNet)."""
    cfg = getattr(backbone, "config", None)
    if cfg is None:
        return 1
    if getattr(cfg, "patch_size", None):
        return int(cfg.patch_size)
    downs = getattr(cfg, "down_block_types", None)
    return 2 ** (len(downs) - 1) if downs else 1


def max_latent_tile(backbone: nn.Module) -> int | None:
    """Largest latent side the backbone accepts (SD3: pos_embed_max_size × patch), None if unbounded."""
    cfg = getattr(backbone, "config", None)
    pmax, patch = getattr(cfg, "pos_embed_max_size", None), getattr(cfg, "patch_size", None)
    return int(pmax) * int(patch) if pmax and patch else None


SAMPLER_KEYS = ("steps", "strength", "scheduler", "fixed_steps", "mean_steps_per_region", "regressor_evals",
                "intervals", "tau", "region", "region_overlap")


class DiffusionSR(nn.Module):
    """A one-step latent SR model (``OneStepTeacher`` or a student with the same interface) as an upscaler."""

    def __init__(self, model: nn.Module, scale: int = 4, name: str = "teacher", tile: int | str | None = "model",
                 tile_overlap: int | str = "model", vae_tiling: bool = False, vae_tile: int = 512,
                 color_fix: str = "none", seed: int = 0, channels_last: bool = False):
        """``tile``: latent tile size, ``"model"`` (the model's own ``tile``; untiled if it has none) or
        ``None``/``"none"`` (untiled where the backbone allows). ``tile_overlap``: an int or ``"model"``.
        ``channels_last``: the VAE's weights and its inputs in channels-last layout (faster convolutions on
        CPUs; converts the shared model's VAE in place, which changes no value beyond round-off)."""
        super().__init__()
        self.model, self.scale, self.name, self.seed = model, scale, name, seed
        self.color_fix_method = color_fix
        self.requested_tile, self.requested_overlap = tile, tile_overlap
        own_tile, own_overlap = getattr(model, "tile", None), getattr(model, "tile_overlap", 8)
        tile = own_tile if tile == "model" else (None if tile == "none" else tile)
        overlap = own_overlap if tile_overlap == "model" else int(tile_overlap)
        cap = max_latent_tile(model.backbone)
        # A bounded positional embedding (SD3) cannot run untiled beyond its size: cap, and tile at the cap.
        self.tile = (min(tile, cap) if tile is not None else cap) if cap else tile
        self.tile_overlap = min(overlap, (self.tile or 1) - 1) if self.tile else overlap
        self.vae_tiling, self.vae_tile = vae_tiling, vae_tile
        self.multiple = model.latent_factor * _backbone_multiple(model.backbone)
        self.sample_mode = getattr(getattr(model, "convention", None), "mode", "mean") == "sample"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model.vae.to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def _vae_tiling(self):
        """diffusers' tiled VAE encode/decode for this call only (the model object may be shared)."""
        vae = self.model.vae
        if not (self.vae_tiling and hasattr(vae, "enable_tiling")):
            yield
            return
        saved = {k: getattr(vae, k) for k in ("use_tiling", "tile_sample_min_size", "tile_latent_min_size")
                 if hasattr(vae, k)}
        vae.enable_tiling()
        if "tile_sample_min_size" in saved:  # AutoencoderKL tile sizes, in pixels and in latents
            vae.tile_sample_min_size = self.vae_tile
            vae.tile_latent_min_size = self.vae_tile // self.model.latent_factor
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(vae, k, v)

    def restore(self, x: Tensor) -> Tensor:
        """Padded, upsampled LR → SR (no colour fix): encode, one tiled step, decode."""
        m = self.model
        with self._vae_tiling():
            x = x.contiguous(memory_format=self.memory_format)
            z = m.encode(x, torch.Generator().manual_seed(self.seed)) if self.sample_mode else m.encode(x)
            z = tiled(m.restore_tile, z, self.tile, self.tile_overlap) if self.tile else m.restore_tile(z)
            return m.decode(z.contiguous(memory_format=self.memory_format))

    def forward(self, lr: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        out_device = lr.device
        up = bicubic_up(lr.to(module_device(self.model, out_device)), self.scale, size)
        h, w = up.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        x = F.pad(up, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate") if ph or pw else up
        sr = self.restore(x)[..., :h, :w]
        return color_fix(sr, up, self.color_fix_method).to(out_device)

    def describe(self) -> dict:
        d = self.model.describe() if hasattr(self.model, "describe") else {}
        sampler = {k: d[k] for k in SAMPLER_KEYS if k in d}  # multi-step teachers: how their steps were taken
        return {**sampler, "kind": d.get("kind", type(self.model).__name__), "scale": self.scale,
                "tile": self.tile, "tile_requested": self.requested_tile, "tile_overlap": self.tile_overlap,
                "tile_overlap_requested": self.requested_overlap,
                "latent_sampling": f"posterior sample, seed {self.seed}" if self.sample_mode else "posterior mean",
                "tile_blend": "gaussian-var-0.01", "vae_tiling": self.vae_tiling,
                "vae_tile": self.vae_tile if self.vae_tiling else None, "color_fix": self.color_fix_method,
                "memory_format": "channels_last" if self.memory_format is torch.channels_last else "contiguous",
                "pad_multiple": self.multiple, "input": "bicubic-x{}-reflect-pad".format(self.scale),
                "params": sum(p.numel() for p in self.parameters())}
