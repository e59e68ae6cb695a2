"""PEAM inside the pruned UNet decoder — OUR READING of PGP-DiffSR's phase-exchange adapter (docs/methods.md §8.4).

The paper finds that a pruned model estimates the Fourier phase of the restoration poorly and feeds the LQ
input's phase into the pruned backbone; its equations are not public. Ours: at the output of each decoder stage
the pruning touched (``up_blocks.i``), the features h (B, C, H, W) keep their amplitude and take the phase of
the LQ latent brought to that resolution and width::

    A = |FFT2(h)|,  P = angle(FFT2(conv3×3(resize(z_lq))))
    h ← h + fuse([h, IFFT2(A · e^{iP})])        # fuse: 1×1 conv, zero-initialised → exactly the identity

Flag: ``distill.phase_adapter: peam`` (``post`` is the latent-space adapter after the backbone,
``models/student/phase.py``). The stages are chosen from the mask (``peam_stages``) and saved with the student.
For a DiT student (``TokenPEAM``, ours) the same exchange follows the kept block before each run of pruned
blocks (``peam_blocks``), on the image tokens folded back to the patch grid.

    peam = DecoderPEAM(unet, stages=[1], lq_channels=4)    # or TokenPEAM(transformer, blocks, lq_channels)
    with peam.attached(unet, z_lq):
        out = unet(...)
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def phase_exchange(h: Tensor, guide: Tensor) -> Tensor:
    """h's Fourier amplitude with ``guide``'s phase (both (B, C, H, W), per channel, orthonormal FFT)."""
    spec = torch.fft.fft2(h.float(), norm="ortho")
    phase = torch.angle(torch.fft.fft2(guide.float(), norm="ortho"))
    return torch.fft.ifft2(spec.abs() * torch.exp(1j * phase), norm="ortho").real.to(h.dtype)


class StagePEAM(nn.Module):
    """One decoder stage's adapter: LQ latent → that stage's width, phase exchange, zero-initialised fusion."""

    def __init__(self, channels: int, lq_channels: int):
        super().__init__()
        self.lq_proj = nn.Conv2d(lq_channels, channels, 3, padding=1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, h: Tensor, z_lq: Tensor) -> Tensor:
        lq = z_lq.to(h.dtype)
        if lq.shape[-2:] != h.shape[-2:]:
            lq = F.interpolate(lq, size=h.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return h + self.fuse(torch.cat([h, phase_exchange(h, self.lq_proj(lq))], dim=1))


def peam_stages(teacher_units: Sequence[str], pruned: set[str], num_up_blocks: int) -> list[int]:
    """The decoder stages PEAM sits at: every ``up_blocks.i`` the mask removed a unit from; if the pruning
    left the decoder whole, its last stage (the one at the output's resolution) — ours, recorded."""
    stages = sorted({int(n.split(".")[1]) for n in teacher_units if n in pruned and n.startswith("up_blocks.")})
    return stages or [num_up_blocks - 1]


def peam_blocks(keep: Sequence[int], num_blocks: int) -> list[int]:
    """The student blocks of a DiT PEAM follows (ours): for every run of consecutive pruned teacher blocks, the
    kept block before it (the features that now skip the run; the first kept block for a run at the start);
    the last block when nothing was pruned. Student indices."""
    keep = sorted(keep)
    runs = [j for j in range(num_blocks) if j not in keep and (j == 0 or j - 1 in keep)]  # each run's first block
    out = {max([k for k in keep if k < j], default=keep[0]) for j in runs} if keep else set()
    return sorted(keep.index(k) for k in out) or [len(keep) - 1]


class _HookedPEAM(nn.Module):
    """Stage adapters applied to the outputs of some of a backbone's modules while ``attached``."""

    kind = ""
    stages: list[int]

    def _modules_of(self, backbone: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def _adapt(self, adapter: StagePEAM, output, z_lq: Tensor):
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "stages": self.stages, "lq_channels": self.lq_channels}

    @contextlib.contextmanager
    def attached(self, backbone: nn.Module, z_lq: Tensor) -> Iterator[None]:
        modules = self._modules_of(backbone)
        handles = [modules[i].register_forward_hook(
            lambda module, args, output, _a=self.adapters[str(i)]: self._adapt(_a, output, z_lq)) for i in self.stages]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


class DecoderPEAM(_HookedPEAM):
    """PEAM at the given ``up_blocks`` of a ``UNet2DConditionModel``."""

    kind = "unet"

    def __init__(self, unet: nn.Module, stages: Sequence[int], lq_channels: int):
        super().__init__()
        bad = [i for i in stages if not 0 <= i < len(unet.up_blocks)]
        if not stages or bad:
            raise ValueError(f"PEAM: decoder stages {list(stages)} (the UNet has {len(unet.up_blocks)} up blocks)")
        self.stages, self.lq_channels = [int(i) for i in stages], int(lq_channels)
        self.adapters = nn.ModuleDict({str(i): StagePEAM(unet.up_blocks[i].resnets[-1].out_channels, lq_channels)
                                       for i in self.stages})

    def _modules_of(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.up_blocks

    def _adapt(self, adapter: StagePEAM, output, z_lq: Tensor):
        return adapter(output, z_lq)


class TokenPEAM(_HookedPEAM):
    """PEAM after the given blocks of an SD3-style transformer (diffusers', streamlined or image-only): the
    image tokens (B, N, C) are folded back to the patch grid (B, C, H/p, W/p), exchanged, and unfolded; an SD3
    block's context stream passes through."""

    kind = "dit"

    def __init__(self, transformer: nn.Module, stages: Sequence[int], lq_channels: int):
        super().__init__()
        n = len(transformer.transformer_blocks)
        if not stages or any(not 0 <= i < n for i in stages):
            raise ValueError(f"PEAM: blocks {list(stages)} (the transformer has {n})")
        cfg = transformer.config
        self.stages, self.lq_channels = [int(i) for i in stages], int(lq_channels)
        self.patch = int(cfg.patch_size)
        dim = int(cfg.num_attention_heads * cfg.attention_head_dim)
        self.adapters = nn.ModuleDict({str(i): StagePEAM(dim, lq_channels) for i in self.stages})

    def _modules_of(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.transformer_blocks

    def _adapt(self, adapter: StagePEAM, output, z_lq: Tensor):
        tokens = output[-1] if isinstance(output, tuple) else output
        b, n, c = tokens.shape
        hp, wp = z_lq.shape[-2] // self.patch, z_lq.shape[-1] // self.patch
        if hp * wp != n:
            raise ValueError(f"PEAM: {n} tokens are not the {hp}×{wp} patch grid of the latent")
        grid = adapter(tokens.transpose(1, 2).reshape(b, c, hp, wp), z_lq)
        tokens = grid.reshape(b, c, n).transpose(1, 2)
        return (*output[:-1], tokens) if isinstance(output, tuple) else tokens
