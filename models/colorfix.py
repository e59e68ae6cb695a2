"""Colour correction of one-step SR outputs against their LQ input (OSEDiff / TSD-SR / TinySR evaluation).

- ``adain``: match each channel's mean and standard deviation to the LQ (OSEDiff ``adain_color_fix``,
  the TinySR test default).
- ``wavelet``: keep the SR output's high frequencies and take the LQ's low frequencies, split with five levels
  of a dilated 3×3 binomial blur (StableSR / TSD-SR ``wavelet_color_fix``, their default).

Both take RGB in [0, 1], (B, 3, H, W), the LQ already at the SR size.

    sr = color_fix(sr, lq_up, "wavelet")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_BINOMIAL = torch.tensor([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])


def adain(sr: Tensor, ref: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-image, per-channel mean/std of ``sr`` matched to ``ref``."""
    m_s, s_s = sr.mean(dim=(-2, -1), keepdim=True), sr.std(dim=(-2, -1), keepdim=True) + eps
    m_r, s_r = ref.mean(dim=(-2, -1), keepdim=True), ref.std(dim=(-2, -1), keepdim=True) + eps
    return ((sr - m_s) / s_s * s_r + m_r).clamp(0, 1)


def _blur(x: Tensor, dilation: int) -> Tensor:
    """3×3 binomial blur at ``dilation`` (capped so the padding fits the image), replicate borders."""
    d = min(dilation, min(x.shape[-2:]) - 1)
    if d <= 0:
        return x
    c = x.shape[1]
    return F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), _BINOMIAL.to(device=x.device, dtype=x.dtype).expand(c, 1, 3, 3),
                    groups=c, dilation=d)


def wavelet_decompose(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """(high frequencies, low frequencies) with ``x = high + low``; level i blurs at dilation 2**i.

    The high band is the sum of the per-level details, which telescopes to ``x − low``.
    """
    low = x
    for i in range(levels):
        low = _blur(low, 2**i)
    return x - low, low


def wavelet(sr: Tensor, ref: Tensor, levels: int = 5) -> Tensor:
    sr_high, _ = wavelet_decompose(sr, levels)
    _, ref_low = wavelet_decompose(ref, levels)
    return (sr_high + ref_low).clamp(0, 1)


def color_fix(sr: Tensor, ref: Tensor, method: str) -> Tensor:
    """``method``: none | adain | wavelet (unknown names fail loudly)."""
    if sr.shape != ref.shape:
        raise ValueError(f"color fix needs the LQ at the SR size: {tuple(ref.shape)} vs {tuple(sr.shape)}")
    if method == "none":
        return sr
    if method == "adain":
        return adain(sr, ref)
    if method == "wavelet":
        return wavelet(sr, ref)
    raise ValueError(f"unknown color fix {method!r} (none | adain | wavelet)")
