"""Small, exact image metrics used inside training steps (the full metric layer lives in the evaluation step).

PSNR-Y follows the SR convention (BasicSR ``calculate_psnr(test_y_channel=True)``, pyiqa ``psnr`` with
``test_y_channel=True, color_space='ycbcr'``): ITU-R BT.601 luma on the [16, 235] scale,
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], PSNR against a peak of 255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def rgb_to_y(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, H, W) BT.601 luma in [16, 235]."""
    return 16.0 + 65.481 * x[:, 0] + 128.553 * x[:, 1] + 24.966 * x[:, 2]


def psnr_y(pred: Tensor, target: Tensor, crop_border: int = 0) -> Tensor:
    """Per-image PSNR on the Y channel (dB), shape (B,). Inputs are RGB in [0, 1]."""
    a, b = rgb_to_y(pred.clamp(0, 1).double()), rgb_to_y(target.clamp(0, 1).double())
    if crop_border:
        a, b = a[:, crop_border:-crop_border, crop_border:-crop_border], b[:, crop_border:-crop_border, crop_border:-crop_border]
    mse = ((a - b) ** 2).mean(dim=(1, 2)).clamp_min(1e-12)
    return 10 * torch.log10(255.0**2 / mse)


def bicubic_to(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bicubic resize to ``size`` (no antialias, align_corners=False: the sr_bicubic convention), clamped."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
