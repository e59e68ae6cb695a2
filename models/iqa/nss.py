"""No-reference natural-scene-statistics metrics with MATLAB's conventions, in float64: NIQE and PIQE.

Both normalise the grey image into MSCN coefficients (``mscn``) and read their statistics per block.

**NIQE** (Mittal, Soundararajan & Bovik 2013) as the official MATLAB release computes it.

Official code: ``niqe_release`` (``computequality.m``, ``computefeature.m``, ``estimateaggdparam.m``; mirrored
e.g. in open-mmlab/mmagic ``codes/utils/perceptualmetric/``), prior ``modelparameters.mat`` re-saved by BasicSR
as ``niqe_pris_params.npz`` (fetched by ``infra/assets.py``).

- grey level: ``computequality.m`` calls ``rgb2gray`` on the uint8 image, so the default ``niqe_color_space`` is
  ``gray``, rounded (the input of pyiqa's official MATLAB numbers, ResultsCalibra.md note 11). BasicSR's
  ``calculate_niqe`` defaults to BT.601 Y (``ycbcr``) instead; the prior was fitted on ``rgb2gray`` images, and
  Y's [16, 235] range shrinks the contrast that the MSCN's ``+1`` is measured against: on pyiqa's calibration
  pairs Y moves NIQE by up to 3.8 %, in MATLAB as here (``results_original.csv`` before/after IQA-PyTorch
  commit 13792e4).
- crop to whole 96×96 blocks; MSCN with the 7×7 Gaussian σ = 7/6 ('replicate' borders); 18 AGGD features per
  block (0.001-step shape search) at full and half scale (MATLAB ``imresize(im, 0.5)``: bicubic, antialiased,
  symmetric borders); Mahalanobis-like distance to the prior with ``pinv((Σ_prior + Σ_image) / 2)``.

Flat regions. A window that is constant has MSCN exactly 0 in exact arithmetic, but a filter computed as
``Σ w·x`` leaves ±1-ulp residues whose sign depends on the summation order (MATLAB's separable ``imfilter``,
torch's ``conv2d``, CPU vs GPU). ``estimateaggdparam.m`` splits samples by sign, so those residues decide the
left/right AGGD widths of every block with a flat area: on pyiqa's posterised pair I19 the score moves by 5.7 %
with nothing but the residues' signs. We compute the value exact arithmetic gives (``mscn``): local statistics
of the differences to the centre pixel, summed per ring of equal weight, so flat and symmetric windows give
exactly 0 on every platform while every other value is unchanged (mean and variance are shift-invariant). The
half-scale image is resized with a fixed per-pixel tap order, so a constant region stays exactly constant.
MATLAB's own residues are not reproducible; on the two calibration pairs with flat areas this leaves I19 at
+0.35 % and I08 at +0.56 % of the official value (I03/I04/I06: ≤ 0.05 %, I04 to 1e-13).

**PIQE** (Venkatanath et al., NCC 2015) with MATLAB ``piqe``'s conventions, in float64. Lower is better, 0–100.

Conventions of MATLAB's Image Processing Toolbox ``piqe`` (R2018b+; pyiqa ``archs/piqe_arch.py`` follows the
same function and records its values in IQA-PyTorch ``ResultsCalibra/results_official.csv``):
- ``rgb2gray`` on the uint8 image (rounded), values on [0, 255]; the image is padded ('replicate', after the
  last row/column) to whole 16×16 blocks;
- MSCN with ``imgaussfilt(σ = 7/6, FilterSize 7, 'replicate')`` and ``+1`` in the denominator (``mscn``);
- a block is active when the unbiased variance of its MSCN exceeds 0.1; an active block
  - shows a noticeable artifact when any of the 11 six-pixel segments of any of its four edges has an
    unbiased standard deviation below 0.1,
  - is noisy when σ_block > 2 β, with β = |σ_block − r| / max(σ_block, r) and r the ratio of the standard
    deviations of the two centre columns (8 and 9, 1-based) and of the rest; MATLAB deletes column 8 and then
    column 9 *of the shortened block*, so the "rest" excludes original columns 8 and 10 and keeps 9 — kept
    here because the official numbers include it; a 0/0 ratio counts as 0;
- score = 100 · (1 + Σ_active [artifact · (1 − v) + noise · v]) / (1 + #active).
pyiqa differs in two places that do not show on its calibration pairs: it divides the grey image by its
maximum before scaling to 255 (MATLAB's ``im2double`` does not), and pads ``rem(size, 16)`` pixels
symmetrically instead of up to the next multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from srcompress.models.iqa.native import NativeMetric, gaussian, grey8
from srcompress.models.iqa.registry import (
    ImageTooSmall,
    MetricEnv,
    MetricInfo,
    MetricUnavailable,
    register,
    require_files,
)

Tensor = torch.Tensor
BLOCK = 96  # NIQE: the official recommended block size, no overlap
_GAM = torch.arange(0.2, 10.0005, 0.001, dtype=torch.float64)  # estimateaggdparam.m: gam = 0.2:0.001:10
_R_GAM = torch.exp(2 * torch.lgamma(2 / _GAM) - torch.lgamma(1 / _GAM) - torch.lgamma(3 / _GAM))


def mscn(img: Tensor, win: Tensor) -> tuple[Tensor, Tensor]:
    """(MSCN, local σ) of an (H, W) float64 image: ``(x − μ) / (σ + 1)`` with ``win`` and 'replicate' borders.

    μ − x and E[x²] − μ² are accumulated over differences ``x_k − x``, so a constant window gives exactly 0
    (see the module docstring) and the variance does not cancel on [0, 255] data. Taps of equal weight (the
    Gaussian's rings) are summed before weighting: on integer images those sums are exact, so a window whose
    mean equals its centre in exact arithmetic (e.g. a symmetric ramp) also gives exactly 0, whatever the
    summation order of the remaining ten products."""
    kh, kw = win.shape
    h, w = img.shape
    padded = F.pad(img[None, None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")[0, 0]
    mean_d = torch.zeros_like(img)
    mean_d2 = torch.zeros_like(img)
    for weight in torch.unique(win):
        ring_d = torch.zeros_like(img)
        ring_d2 = torch.zeros_like(img)
        for i, j in (win == weight).nonzero().tolist():
            d = padded[i : i + h, j : j + w] - img
            ring_d += d
            ring_d2 += d * d
        mean_d += weight * ring_d
        mean_d2 += weight * ring_d2
    sigma = torch.sqrt((mean_d2 - mean_d * mean_d).abs())
    return -mean_d / (sigma + 1), sigma


def aggd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of (N, P): AGGD (alpha, beta_left, beta_right) by moment matching (estimateaggdparam.m)."""
    neg, pos = (x < 0).double(), (x > 0).double()
    left = torch.sqrt((x * x * neg).sum(1) / neg.sum(1))
    right = torch.sqrt((x * x * pos).sum(1) / pos.sum(1))
    g = left / right
    r = x.abs().mean(1) ** 2 / (x * x).mean(1)
    rn = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    # MATLAB's min skips NaN: an all-NaN search (a block without negative or positive values) returns gam(1).
    alpha = _GAM[torch.argmin(torch.nan_to_num((_R_GAM[None] - rn[:, None]) ** 2, nan=math.inf), dim=1)]
    k = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left * k, right * k


def block_features(blocks: Tensor) -> Tensor:
    """(N, b, b) MSCN blocks → (N, 18): [α, mean β] then, per neighbour (→, ↓, ↘, ↙), [α, η, β_l, β_r]."""
    n = blocks.shape[0]
    a, bl, br = aggd(blocks.reshape(n, -1))
    feats = [a, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # circular shifts within the block (computefeature.m)
        pair = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        a, bl, br = aggd(pair.reshape(n, -1))
        feats += [a, (br - bl) * torch.exp(torch.lgamma(2 / a) - torch.lgamma(1 / a)), bl, br]
    return torch.stack(feats, dim=1)


def _resize_taps(n_in: int, scale: float) -> tuple[Tensor, Tensor]:
    """(weights, source indices), each (n_out, taps), of MATLAB imresize's bicubic kernel along one axis
    (antialiased when shrinking: the kernel is stretched by 1/scale; 'symmetric' edges)."""
    n_out = int(math.ceil(n_in * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    idx = np.floor(u - width / 2)[:, None] + np.arange(int(math.ceil(width)) + 2)[None]
    ad = np.abs((u[:, None] - idx) * min(scale, 1.0))
    w = (1.5 * ad**3 - 2.5 * ad**2 + 1) * (ad <= 1) + (-0.5 * ad**3 + 2.5 * ad**2 - 4 * ad + 2) * ((ad > 1) & (ad <= 2))
    w = w / w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    return torch.from_numpy(w), torch.from_numpy(mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)])


def _resize_axis(x: Tensor, dim: int, scale: float) -> Tensor:
    w, idx = _resize_taps(x.shape[dim], scale)
    shape = [1, 1]
    shape[dim] = -1
    out = torch.zeros(())
    for k in range(w.shape[1]):  # one tap at a time: every output pixel sums its taps in the same order
        out = out + w[:, k].reshape(shape) * x.index_select(dim, idx[:, k])
    return out


def imresize_half(img: Tensor) -> Tensor:
    """MATLAB ``imresize(img, 0.5)`` (bicubic, antialiased) of (H, W) float64: rows first, as MATLAB orders
    equal scales."""
    return _resize_axis(_resize_axis(img, 0, 0.5), 1, 0.5)


def niqe_grey(grey: Tensor, mu_pris: Tensor, cov_pris: Tensor, block: int = BLOCK) -> float:
    """NIQE of one (H, W) grey image on [0, 255] (already rounded as the MATLAB convention)."""
    h, w = grey.shape
    nh, nw = h // block, w // block
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {block}x{block} blocks, image is {w}x{h}")
    img = grey[: nh * block, : nw * block].double()
    win = gaussian(7, 7 / 6)
    feats = []
    for scale in (1, 2):
        m, _ = mscn(img, win)
        b = block // scale
        blocks = m.reshape(nh, b, nw, b).permute(2, 0, 1, 3).reshape(-1, b, b)  # column-major, as blkproc
        feats.append(block_features(blocks))
        if scale == 1:
            img = imresize_half(img)
    feat = torch.cat(feats, dim=1)
    mu_d = torch.nanmean(feat, dim=0)
    clean = feat[~torch.isnan(feat).any(dim=1)]  # nancov's default: complete rows only
    cov_d = torch.cov(clean.T)
    diff = mu_pris.double().reshape(-1) - mu_d
    return float(torch.sqrt(diff @ torch.linalg.pinv((cov_pris.double() + cov_d) / 2) @ diff))


def niqe(x01: Tensor, mu_pris: Tensor, cov_pris: Tensor, crop_border: int = 0, color_space: str = "gray") -> Tensor:
    """(B,) NIQE of RGB images in [0, 1] on the rounded grey level of ``color_space`` (default: rgb2gray)."""
    grey = grey8(x01, color_space, crop_border)
    return torch.tensor([niqe_grey(grey[i, 0], mu_pris, cov_pris) for i in range(grey.shape[0])], dtype=torch.float64)


def load_niqe_prior(path) -> tuple[Tensor, Tensor]:
    with np.load(path, allow_pickle=False) as npz:
        return torch.from_numpy(np.asarray(npz["mu_pris_param"], np.float64)), \
            torch.from_numpy(np.asarray(npz["cov_pris_param"], np.float64))


@register("niqe")
def _niqe(env: MetricEnv) -> NativeMetric:
    if env.niqe_params is None:
        raise MetricUnavailable("unavailable: niqe_pris_params.npz not located (run `srcompress assets fetch`)")
    require_files([env.niqe_params])
    mu, cov = load_niqe_prior(env.niqe_params)

    def fn(a: Tensor, _b: Tensor | None) -> Tensor:
        c = env.crop_border
        h, w = a.shape[-2] - 2 * c, a.shape[-1] - 2 * c
        if (h // BLOCK) * (w // BLOCK) < 2:  # the distorted MVG needs ≥2 blocks for a covariance
            raise ImageTooSmall(f"niqe needs at least two 96x96 blocks, image is {w}x{h} after cropping")
        return niqe(a, mu, cov, c, env.niqe_color_space)

    return NativeMetric(MetricInfo("niqe", "NR", True, "srcompress/niqe.m-convention+basicsr-params", 1), env, fn)


# ---- PIQE ----------------------------------------------------------------------------------------------
PIQE_BLOCK, SEGMENT = 16, 6
ACTIVITY_THRESHOLD = IMPAIRED_THRESHOLD = 0.1


def _edge_impaired(blocks: Tensor) -> Tensor:
    """(N, 16, 16) → (N,) bool: some 6-pixel segment of some edge has std < 0.1 (noticeDistCriterion)."""
    edges = torch.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], dim=1)
    seg_std = edges.unfold(-1, SEGMENT, 1).std(dim=-1, unbiased=True)  # (N, 4, 11)
    return (seg_std < IMPAIRED_THRESHOLD).flatten(1).any(dim=1)


def _noisy(blocks: Tensor, var: Tensor) -> Tensor:
    """(N, 16, 16) → (N,) bool: σ_block > 2 β (noiseCriterion / centerSurDev)."""
    sigma = var.sqrt()
    centre = blocks[:, :, 7:9].flatten(1)
    keep = [j for j in range(PIQE_BLOCK) if j not in (7, 9)]  # MATLAB's sequential column deletion (docstring)
    surround = blocks[:, :, keep].flatten(1)
    ratio = centre.std(dim=1, unbiased=True) / surround.std(dim=1, unbiased=True)
    ratio = torch.where(torch.isnan(ratio), torch.zeros_like(ratio), ratio)  # only NaN → 0; Inf stays
    beta = (sigma - ratio).abs() / torch.maximum(sigma, ratio)
    return sigma > 2 * beta  # NaN β (both zero) compares False, as in MATLAB


def piqe_grey(grey: Tensor) -> float:
    """PIQE of one (H, W) grey image on [0, 255], already rounded as MATLAB's uint8 ``rgb2gray``."""
    h, w = grey.shape
    img = F.pad(grey.double()[None, None], (0, -w % PIQE_BLOCK, 0, -h % PIQE_BLOCK), mode="replicate")[0, 0]
    norm, _ = mscn(img, gaussian(7, 7 / 6))
    b = PIQE_BLOCK
    blocks = norm.unfold(0, b, b).unfold(1, b, b).reshape(-1, b, b)
    var = blocks.flatten(1).var(dim=1, unbiased=True)
    active = var > ACTIVITY_THRESHOLD
    dist = _edge_impaired(blocks).double() * (1 - var) + _noisy(blocks, var).double() * var
    return float(100 * (1 + (dist * active).sum()) / (1 + active.sum()))


def piqe(x01: Tensor) -> Tensor:
    """(B,) PIQE of RGB images in [0, 1]."""
    grey = grey8(x01, "gray")
    return torch.tensor([piqe_grey(grey[i, 0]) for i in range(grey.shape[0])], dtype=torch.float64)


@register("piqe")
def _piqe(env: MetricEnv) -> NativeMetric:
    # MATLAB's piqe reads the whole image (no border crop) and always uses rgb2gray.
    return NativeMetric(MetricInfo("piqe", "NR", True, "srcompress/matlab-piqe-convention", PIQE_BLOCK),
                        replace(env, crop_border=0), lambda a, _b: piqe(a))
