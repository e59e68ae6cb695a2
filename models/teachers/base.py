"""The one interface every later step uses to talk to a one-step diffusion SR teacher.

    teacher = load_teacher(folder)                     # models/teachers/loader.py
    z_lq = teacher.encode(lq)                          # lq: (B,3,H,W) in [0,1], already at HQ size
    z_sr = teacher.restore_latent(z_lq)                # one step: SD3 z0 = z_L − v(z_L, t=1000); UNet via ε at t=999
    sr = teacher.decode(z_sr)                          # (B,3,H,W) in [0,1]
    for name, block in teacher.prunable_blocks(): ...  # stable names: transformer_blocks.3, down_blocks.0.resnets.1, …
    with teacher.capture(["transformer_blocks.0"]) as feats: teacher.restore_latent(z_lq)

The latent convention (scaling, shift, mean vs seeded sample) is explicit and recorded with every cache,
because mismatched conventions silently break latent losses (docs/methods.md §2).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class LatentConvention:
    """How pixels become latents: ``z = (E(2x−1) − shift) · scale`` with E = posterior mean or a seeded sample."""

    scaling_factor: float
    shift_factor: float  # 0.0 when not used (TSD-SR does not apply the SD3 VAE's shift)
    mode: Literal["mean", "sample"]

    def as_dict(self) -> dict:
        return asdict(self)


class BlockCapture(dict):
    """name → {"input": tensor, "output": tensor} for each captured block (image stream only)."""


def image_stream(value):
    """The image-token tensor of a block's input/output (SD3 blocks return (context, image) tuples)."""
    if isinstance(value, (tuple, list)):
        tensors = [v for v in value if isinstance(v, torch.Tensor)]
        return tensors[-1] if tensors else None
    return value


class OneStepTeacher(nn.Module, ABC):
    """VAE + backbone + fixed conditioning, run as a one-step restorer in latent space."""

    kind: str = "abstract"

    def __init__(self, vae: nn.Module, backbone: nn.Module, convention: LatentConvention,
                 tile: int | None = None, tile_overlap: int = 8):
        super().__init__()
        self.vae = vae
        self.backbone = backbone
        self.convention = convention
        self.tile = tile  # latent tile size; None = run the backbone on the whole latent
        self.tile_overlap = tile_overlap

    # -- latent space -------------------------------------------------------------------------------
    def encode(self, x01: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
        """Pixels in [0, 1] → scaled latents. ``sample`` mode needs generators (one per sample, or one)."""
        dist = self.vae.encode(x01 * 2 - 1).latent_dist
        if self.convention.mode == "mean":
            z = dist.mean
        else:
            if generator is None:
                raise ValueError("latent mode 'sample' needs a seeded generator")
            gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
            # CPU generators: the draw is the same on every device (docs/architecture.md §4).
            eps = torch.cat([torch.randn(dist.mean[i : i + 1].shape, generator=gens[i % len(gens)],
                                         dtype=dist.mean.dtype) for i in range(dist.mean.shape[0])])
            eps = eps.to(dist.mean.device)
            z = dist.mean + dist.std * eps
        return (z - self.convention.shift_factor) * self.convention.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        x = self.vae.decode(z / self.convention.scaling_factor + self.convention.shift_factor).sample
        return ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)

    @abstractmethod
    def restore_tile(self, z_lq: Tensor) -> Tensor:
        """One denoising step on a latent the backbone accepts whole."""

    def restore_latent(self, z_lq: Tensor) -> Tensor:
        """One denoising step from the LQ latent to the restored latent (tiled when ``tile`` is set)."""
        if self.tile is None:
            return self.restore_tile(z_lq)
        from srcompress.models.teachers.tiling import tiled

        return tiled(self.restore_tile, z_lq, self.tile, self.tile_overlap)

    def forward(self, lq01: Tensor) -> Tensor:
        """LQ (already upsampled to the output size) → SR, both in [0, 1]."""
        return self.decode(self.restore_latent(self.encode(lq01)))

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each axis (SD: 8; the tiny bootstrap VAE: 4)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- blocks -------------------------------------------------------------------------------------
    @abstractmethod
    def prunable_blocks(self) -> list[tuple[str, nn.Module]]:
        """Ordered (stable name, module) of the units depth pruning may remove."""

    def block(self, name: str) -> nn.Module:
        for n, m in self.prunable_blocks():
            if n == name:
                return m
        raise KeyError(f"no prunable block {name!r} (have: {[n for n, _ in self.prunable_blocks()][:6]}…)")

    @contextlib.contextmanager
    def capture(self, names: Sequence[str] | None = None, detach: bool = True) -> Iterator[BlockCapture]:
        """Record the image-stream input and output of the named blocks (all if None) during forwards."""
        feats = BlockCapture()
        handles = []
        targets = self.prunable_blocks() if names is None else [(n, self.block(n)) for n in names]
        for name, mod in targets:
            def hook(module, args, kwargs, output, _name=name):
                inp = kwargs.get("hidden_states", args[0] if args else None)
                out = image_stream(output)
                feats[_name] = {"input": inp.detach() if detach else inp, "output": out.detach() if detach else out}
            handles.append(mod.register_forward_hook(hook, with_kwargs=True))
        try:
            yield feats
        finally:
            for h in handles:
                h.remove()

    def describe(self) -> dict:
        return {"kind": self.kind, "convention": self.convention.as_dict(), "latent_factor": self.latent_factor,
                "tile": self.tile, "tile_overlap": self.tile_overlap,
                "latent_channels": int(self.vae.config.latent_channels),
                "prunable_blocks": len(self.prunable_blocks()),
                "params_backbone": sum(p.numel() for p in self.backbone.parameters()),
                "params_vae": sum(p.numel() for p in self.vae.parameters())}
