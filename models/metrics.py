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


def grid_ratio(x: Tensor, period: int) -> float:
    """How much a ``period``-pixel block grid stands out in ``x`` (N, C, H, W in [0, 1]), the measurable form of
    "no visible patch grid" (ours): the mean absolute luma step between neighbouring pixels across the block
    boundaries (columns and rows k·period − 1 → k·period) over the mean step everywhere else. A photo or a
    model without a grid gives ≈ 1; tokens that each paint their own ``period``-pixel patch give > 1."""
    y = rgb_to_y(x)[:, None] if x.shape[1] == 3 else x
    dx = (y[..., :, 1:] - y[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # (W − 1,): step from column j to j + 1
    dy = (y[..., 1:, :] - y[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    steps = torch.cat([dx, dy])
    idx = torch.cat([torch.arange(len(dx)), torch.arange(len(dy))])
    at = (idx + 1) % period == 0
    if not at.any() or at.all():
        raise ValueError(f"grid_ratio: a {period}-px period needs images wider and taller than {period} px")
    return float(steps[at].mean() / steps[~at].mean().clamp_min(1e-12))


def boundary_steps(x: Tensor, period: int, offset: tuple[int, int] = (0, 0)) -> Tensor:
    """The steps ``x[..., k·period] − x[..., k·period − 1]`` across every block boundary of a ``period`` grid, along
    both spatial axes, flattened per sample: (B, n). ``offset`` is where the grid starts (a crop's position in
    the full grid), so the boundaries are those of the tokens, not of the crop."""
    h, w = x.shape[-2:]
    cols = [j for j in range(1, w) if (j + offset[1]) % period == 0]
    rows = [i for i in range(1, h) if (i + offset[0]) % period == 0]
    parts = []
    if cols:
        c = torch.tensor(cols, device=x.device)
        parts.append((x[..., c] - x[..., c - 1]).flatten(1))
    if rows:
        r = torch.tensor(rows, device=x.device)
        parts.append((x[..., r, :] - x[..., r - 1, :]).flatten(1))
    if not parts:
        raise ValueError(f"boundary_steps: a {tuple(x.shape[-2:])} input crosses no {period}-cell boundary")
    return torch.cat(parts, dim=1)


def boundary_loss(pred: Tensor, target: Tensor, period: int) -> Tensor:
    """MSE between the prediction's and the target's steps across the ``period`` token boundaries (ours): what a
    patch grid is, penalised where it appears. Tokens each predict their own ``period``-cell patch, and an
    error that is constant within a patch but differs between neighbours leaves a seam that the plain MSE
    weighs no more than any other error of the same energy."""
    return F.mse_loss(boundary_steps(pred, period), boundary_steps(target, period))
