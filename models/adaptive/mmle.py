"""AdaDiffSR's Multi-Metric Latent Entropy (MMLE): the information gain of a denoising step, and the
lightweight regressor that predicts it so inference computes no IQA metric (docs/methods.md §12).

Seed (AdaDiffSR, ECCV 2024, §3.2): the quality of the estimate at step i is ``R_i = Σ_c ω_c M_c(f_i, o)``
over full-reference (FR) and no-reference (NR) metrics; the gain is ``I_i = tanh(R_i − R_{i−1})``; NR metrics
count only in the second half of the trajectory (they are corrupted by noise early on); a conv regressor
trained with L2 stands in for the metrics at inference.

Ours (the seed publishes neither): the offline metric set — FR: PSNR-Y (dB / 10), SSIM-Y, 1 − ST-LPIPS
(when given); NR: −PIQE / 100 — each oriented so that higher is better and scaled to comparable steps; FR and
NR gains are kept apart (DTSS classifies on both trends); the reference of the FR metrics is the HQ image
(only training regions have one, which is why a regressor is needed); the estimate ``f_i`` is the decoded x0
prediction at step i. The regressor sees the region's current x0 latent, its change since the last
evaluated step, the LQ condition and the normalised timestep, and outputs (FR gain, NR gain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class MetricWeights:
    """ω_c of R_i. Keys: psnr, ssim, stlpips (FR); piqe (NR)."""

    fr: dict[str, float] = field(default_factory=lambda: {"psnr": 1.0, "ssim": 1.0, "stlpips": 1.0})
    nr: dict[str, float] = field(default_factory=lambda: {"piqe": 1.0})


def quality(sr01: Tensor, hq01: Tensor, weights: MetricWeights,
            stlpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(R_FR, R_NR) per image of (B, 3, H, W) in [0, 1]: the weighted, higher-is-better metric sums."""
    from srcompress.models.iqa.native import psnr, ssim
    from srcompress.models.iqa.nss import piqe

    terms_fr = {"psnr": lambda: psnr(sr01, hq01) / 10.0, "ssim": lambda: ssim(sr01, hq01),
                "stlpips": (lambda: 1.0 - stlpips(sr01, hq01).flatten()) if stlpips is not None else None}
    r_fr = torch.zeros(sr01.shape[0], dtype=torch.float64)
    for name, w in weights.fr.items():
        if name not in terms_fr:
            raise ValueError(f"unknown FR metric {name!r} (psnr | ssim | stlpips)")
        if w and terms_fr[name] is not None:
            r_fr = r_fr + w * terms_fr[name]().double().cpu()
    r_nr = torch.zeros_like(r_fr)
    for name, w in weights.nr.items():
        if name != "piqe":
            raise ValueError(f"unknown NR metric {name!r} (piqe)")
        if w:
            r_nr = r_nr - w * piqe(sr01).double().cpu() / 100.0
    return r_fr, r_nr


def gain(r_now: Tensor, r_prev: Tensor) -> Tensor:
    """AdaDiffSR's ``I_i = tanh(R_i − R_{i−1})``: in [−1, 1], negative when a step made the estimate worse."""
    return torch.tanh(r_now - r_prev)


class GainRegressor(nn.Module):
    """Predicts (FR gain, NR gain) of a region's last step from latents only: a few strided convs and a linear
    head (ours; the seed says "lightweight convolutional regressor"). Input channels: x0, Δx0, condition
    (each ``latent`` / ``cond`` wide) and one timestep plane."""

    def __init__(self, latent_channels: int, cond_channels: int, width: int = 32):
        super().__init__()
        c_in = 2 * latent_channels + cond_channels + 1
        self.net = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2), nn.Tanh())

    def forward(self, x0: Tensor, dx0: Tensor, cond: Tensor, t_frac: Tensor) -> Tensor:
        """(B, 2) gains in [−1, 1]; ``t_frac`` (B,) is t / T_max."""
        plane = t_frac.view(-1, 1, 1, 1).to(x0).expand(-1, 1, *x0.shape[-2:])
        return self.net(torch.cat([x0, dx0, cond, plane], dim=1))

    def macs(self, h: int, w: int) -> int:
        """Multiply-accumulates of one call on an (h, w) region (counted in the adaptive FLOPs)."""
        total, size = 0, (h, w)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                size = tuple((s + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1 for s in size)
                total += m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * size[0] * size[1]
            elif isinstance(m, nn.Linear):
                total += m.in_features * m.out_features
        return total
