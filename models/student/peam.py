"""PEAM inside the pruned UNet decoder — OUR READING of PGP-DiffSR's phase-exchange adapter (docs/methods.md §8.4).

The paper finds that a pruned model estimates the Fourier phase of the restoration poorly and feeds the LQ
input's phase into the pruned backbone; its equations are not public. Ours: at the output of each decoder stage
the pruning touched (``up_blocks.i``), the features h (B, C, H, W) keep their amplitude and take the phase of
the LQ latent brought to that resolution and width::

    A = |FFT2(h)|,  P = angle(FFT2(conv3×3(resize(z_lq))))
    h ← h + fuse([h, IFFT2(A · e^{iP})])        # fuse: 1×1 conv, zero-initialised → exactly the identity

Flag: ``distill.phase_adapter: peam`` (``post`` is the latent-space adapter after the backbone,
``models/student/phase.py``). The stages are chosen from the mask (``peam_stages``) and saved with the student.

    peam = DecoderPEAM(unet, stages=[1], lq_channels=4)
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


class DecoderPEAM(nn.Module):
    """PEAM at the given ``up_blocks`` of a ``UNet2DConditionModel`` (forward hooks while ``attached``)."""

    def __init__(self, unet: nn.Module, stages: Sequence[int], lq_channels: int):
        super().__init__()
        bad = [i for i in stages if not 0 <= i < len(unet.up_blocks)]
        if not stages or bad:
            raise ValueError(f"PEAM: decoder stages {list(stages)} (the UNet has {len(unet.up_blocks)} up blocks)")
        self.stages = [int(i) for i in stages]
        self.lq_channels = int(lq_channels)
        self.adapters = nn.ModuleDict({str(i): StagePEAM(unet.up_blocks[i].resnets[-1].out_channels, lq_channels)
                                       for i in self.stages})

    def describe(self) -> dict:
        return {"stages": self.stages, "lq_channels": self.lq_channels}

    @contextlib.contextmanager
    def attached(self, unet: nn.Module, z_lq: Tensor) -> Iterator[None]:
        handles = []
        for i in self.stages:
            adapter = self.adapters[str(i)]
            handles.append(unet.up_blocks[i].register_forward_hook(
                lambda module, args, output, _a=adapter: _a(output, z_lq)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
