"""PSNR, SSIM and NIQE exactly as the official (MATLAB-convention) implementations compute them, in float64.

Why not pyiqa for these three: measured on pyiqa's own ``ResultsCalibra`` pairs (tests/models/test_iqa.py),
- pyiqa ``psnr`` adds ``eps=1e-8`` to the MSE on the [0, 1] scale: −0.02 dB at 57 dB (BasicSR/MATLAB: none);
- pyiqa ``ssim`` clamps the contrast-structure map at 0 (ReLU): up to 2e-4 off ``ssim_index.m``;
- pyiqa ``niqe`` builds its 7×7 Gaussian in float32; the variance ``E[x²] − μ²`` cancels catastrophically on
  [0, 255] data, the 0.001-step shape-parameter search amplifies it: up to 1.1 % off a float64 computation.
The pyiqa variants stay registered as ``psnr_pyiqa`` / ``ssim_pyiqa`` / ``niqe_pyiqa`` for comparability
with papers that report them.

- **PSNR-Y** (BasicSR ``calculate_psnr(test_y_channel=True)``): BT.601 Y on [16, 235], unrounded, peak 255.
- **SSIM-Y** (Wang et al., ``ssim_index.m``): Y rounded to 8 bit (MATLAB ``rgb2ycbcr`` on uint8), 11×11
  Gaussian σ = 1.5, 'valid' filtering, K = (0.01, 0.03), L = 255. ``downsample`` reproduces ``ssim.m``'s
  automatic ``f = max(1, round(min(H, W) / 256))`` box filter ('symmetric') + subsampling.
- **NIQE** (Mittal et al. 2013, ``niqe.m``; BasicSR ``calculate_niqe``): grey = Y (BT.601) rounded, cropped to
  96×96 blocks, MSCN with a float64 7×7 Gaussian σ = 7/6 (replicate borders), 18 AGGD features per block at
  full and at half scale (MATLAB bicubic ``imresize`` with antialiasing), MVG distance to the pristine prior.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from srcompress.models.iqa.registry import (
    ImageTooSmall,
    MetricEnv,
    MetricInfo,
    MetricUnavailable,
    register,
    require_files,
)

Tensor = torch.Tensor
_BT601 = (65.481, 128.553, 24.966)
_YIQ_Y = (0.299, 0.587, 0.114)


def luma(x01: Tensor, color_space: str = "ycbcr") -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) Y on the 8-bit scale, float64, unrounded."""
    x = x01.double()
    if color_space == "ycbcr":
        return 16.0 + sum(c * x[:, i : i + 1] for i, c in enumerate(_BT601))
    if color_space == "yiq":
        return 255.0 * sum(c * x[:, i : i + 1] for i, c in enumerate(_YIQ_Y))
    raise ValueError(f"unknown colour space {color_space!r} (ycbcr | yiq)")


def _crop(x: Tensor, c: int) -> Tensor:
    return x[..., c:-c, c:-c] if c else x


def psnr(sr: Tensor, hq: Tensor, crop_border: int = 0, color_space: str = "ycbcr", y_channel: bool = True) -> Tensor:
    a = luma(sr, color_space) if y_channel else sr.double() * 255
    b = luma(hq, color_space) if y_channel else hq.double() * 255
    mse = ((_crop(a, crop_border) - _crop(b, crop_border)) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse)  # identical images → inf, as MATLAB/BasicSR


def gaussian_1d(size: int, sigma: float) -> Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian(size: int, sigma: float) -> Tensor:
    r = (size - 1) / 2
    ax = torch.arange(size, dtype=torch.float64) - r
    g = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum())[None, None]


def _pad_symmetric(x: Tensor, lo: int, hi: int) -> Tensor:
    """MATLAB 'symmetric' padding (mirror including the edge pixel) of the last two dims."""
    for dim in (-2, -1):
        n = x.shape[dim]
        mirror = torch.cat([torch.arange(n), torch.arange(n - 1, -1, -1)])
        idx = mirror[torch.arange(-lo, n + hi) % (2 * n)]
        x = x.index_select(dim, idx)
    return x


def _matlab_downsample(x: Tensor) -> Tensor:
    """ssim.m: f = max(1, round(min(H, W)/256)); f×f box filter ('symmetric', 'same'), keep every f-th pixel."""
    f = max(1, round(min(x.shape[-2:]) / 256))
    if f == 1:
        return x
    lo = (f - 1) // 2  # imfilter's 'same' origin for an f×f kernel is floor((f+1)/2) (1-based)
    return F.avg_pool2d(_pad_symmetric(x, lo, f - 1 - lo), f, stride=1)[..., ::f, ::f]


def ssim(sr: Tensor, hq: Tensor, crop_border: int = 0, color_space: str = "ycbcr", downsample: bool = False) -> Tensor:
    a = torch.round(_crop(luma(sr, color_space), crop_border))
    b = torch.round(_crop(luma(hq, color_space), crop_border))
    if downsample:
        a, b = _matlab_downsample(a), _matlab_downsample(b)
    g = gaussian_1d(11, 1.5)
    # The 2-D Gaussian is separable: two 1-D 'valid' passes equal the 11×11 one up to round-off, ~5× faster.
    f = lambda t: F.conv2d(F.conv2d(t, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    smap = (2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return smap.mean(dim=(1, 2, 3))


# ---- NIQE ----------------------------------------------------------------------------------------------
_GAM = torch.arange(0.2, 10.0005, 0.001, dtype=torch.float64)  # estimateaggdparam.m: gam = 0.2:0.001:10
_R_GAM = torch.exp(2 * torch.lgamma(2 / _GAM) - torch.lgamma(1 / _GAM) - torch.lgamma(3 / _GAM))


def aggd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of (N, P): AGGD (alpha, beta_left, beta_right) by moment matching (estimateaggdparam.m)."""
    neg, pos = (x < 0).double(), (x > 0).double()
    left = torch.sqrt((x * x * neg).sum(1) / neg.sum(1))
    right = torch.sqrt((x * x * pos).sum(1) / pos.sum(1))
    g = left / right
    r = x.abs().mean(1) ** 2 / (x * x).mean(1)
    rn = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = _GAM[torch.argmin((_R_GAM[None] - rn[:, None]) ** 2, dim=1)]
    k = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left * k, right * k


def block_features(blocks: Tensor) -> Tensor:
    """(N, b, b) MSCN blocks → (N, 18): [α, mean β] then, per neighbour (→, ↓, ↘, ↙), [α, η, β_l, β_r]."""
    n = blocks.shape[0]
    a, bl, br = aggd(blocks.reshape(n, -1))
    feats = [a, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # circular shifts, as computefeature.m's circshift
        pair = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        a, bl, br = aggd(pair.reshape(n, -1))
        feats += [a, (br - bl) * torch.exp(torch.lgamma(2 / a) - torch.lgamma(1 / a)), bl, br]
    return torch.stack(feats, dim=1)


def _resize_matrix(n_in: int, scale: float) -> Tensor:
    """(n_out, n_in) weights of MATLAB imresize's bicubic kernel (antialiased when shrinking, symmetric edges)."""
    n_out = int(math.ceil(n_in * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(math.ceil(width)) + 2)[None]
    d = (u[:, None] - idx) * (scale if scale < 1 else 1.0)
    ad = np.abs(d)
    w = (1.5 * ad**3 - 2.5 * ad**2 + 1) * (ad <= 1) + (-0.5 * ad**3 + 2.5 * ad**2 - 4 * ad + 2) * ((ad > 1) & (ad <= 2))
    w = w / w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), w.shape[1]), cols.ravel()), w.ravel())
    return torch.from_numpy(m)


def imresize_half(img: Tensor) -> Tensor:
    """MATLAB ``imresize(img, 0.5)`` (bicubic, antialiased) of (H, W) float64."""
    return _resize_matrix(img.shape[0], 0.5) @ img @ _resize_matrix(img.shape[1], 0.5).T


def niqe_grey(grey: Tensor, mu_pris: Tensor, cov_pris: Tensor, block: int = 96) -> float:
    """NIQE of one (H, W) grey image on [0, 255] (already rounded as the MATLAB/BasicSR convention)."""
    h, w = grey.shape
    nh, nw = h // block, w // block
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {block}x{block} blocks, image is {w}x{h}")
    img = grey[: nh * block, : nw * block].double()
    win = gaussian(7, 7 / 6)
    feats = []
    for scale in (1, 2):
        x = F.pad(img[None, None], (3, 3, 3, 3), mode="replicate")
        mu = F.conv2d(x, win)[0, 0]
        sigma = torch.sqrt((F.conv2d(x * x, win)[0, 0] - mu * mu).abs())
        mscn = (img - mu) / (sigma + 1)
        b = block // scale
        blocks = mscn.reshape(nh, b, nw, b).permute(2, 0, 1, 3).reshape(-1, b, b)  # column-major, as blockproc
        feats.append(block_features(blocks))
        img = imresize_half(img / 255.0) * 255.0
    feat = torch.cat(feats, dim=1)
    mu_d = torch.nanmean(feat, dim=0)
    clean = feat[~torch.isnan(feat).any(dim=1)]
    cov_d = torch.cov(clean.T)
    diff = mu_pris.double().reshape(-1) - mu_d
    return float(torch.sqrt(diff @ torch.linalg.pinv((cov_pris.double() + cov_d) / 2) @ diff))


def niqe(x01: Tensor, mu_pris: Tensor, cov_pris: Tensor, crop_border: int = 0, color_space: str = "ycbcr") -> Tensor:
    grey = torch.round(_crop(luma(x01, color_space), crop_border))
    return torch.tensor([niqe_grey(grey[i, 0], mu_pris, cov_pris) for i in range(grey.shape[0])], dtype=torch.float64)


# ---- registry entries ----------------------------------------------------------------------------------


class _Native:
    def __init__(self, info: MetricInfo, env: MetricEnv, fn):
        self.info, self.env, self._fn = info, env, fn

    @torch.no_grad()
    def score(self, sr: Tensor, hq: Tensor | None = None) -> Tensor:
        if self.info.mode == "FR":
            if hq is None:
                raise ValueError(f"{self.info.name} is full-reference: it needs the HQ image")
            if sr.shape != hq.shape:
                raise ValueError(f"{self.info.name}: SR {tuple(sr.shape)} and HQ {tuple(hq.shape)} differ")
        c = self.env.crop_border
        if min(sr.shape[-2:]) - 2 * c < self.info.min_size:
            raise ImageTooSmall(f"{self.info.name} needs ≥{self.info.min_size} px after cropping {c}, "
                                f"image is {sr.shape[-1]}x{sr.shape[-2]}")
        return self._fn(sr.clamp(0, 1), hq.clamp(0, 1) if hq is not None else None)


@register("psnr")
def _psnr(env: MetricEnv) -> _Native:
    return _Native(MetricInfo("psnr", "FR", False, "srcompress/basicsr-convention", 1), env,
                   lambda a, b: psnr(a, b, env.crop_border, env.color_space, env.test_y_channel))


@register("ssim")
def _ssim(env: MetricEnv) -> _Native:
    return _Native(MetricInfo("ssim", "FR", False, "srcompress/ssim_index.m-convention", 11), env,
                   lambda a, b: ssim(a, b, env.crop_border, env.color_space, env.ssim_downsample))


def load_niqe_prior(path) -> tuple[Tensor, Tensor]:
    with np.load(path, allow_pickle=False) as npz:
        return torch.from_numpy(np.asarray(npz["mu_pris_param"], np.float64)), \
            torch.from_numpy(np.asarray(npz["cov_pris_param"], np.float64))


@register("niqe")
def _niqe(env: MetricEnv) -> _Native:
    if env.niqe_params is None:
        raise MetricUnavailable("unavailable: niqe_pris_params.npz not located (run `srcompress assets fetch`)")
    require_files([env.niqe_params])
    mu, cov = load_niqe_prior(env.niqe_params)

    def fn(a: Tensor, _b) -> Tensor:
        c = env.crop_border
        h, w = a.shape[-2] - 2 * c, a.shape[-1] - 2 * c
        if (h // 96) * (w // 96) < 2:  # the distorted MVG needs ≥2 blocks for a covariance
            raise ImageTooSmall(f"niqe needs at least two 96x96 blocks, image is {w}x{h} after cropping")
        return niqe(a, mu, cov, c, env.niqe_color_space)

    return _Native(MetricInfo("niqe", "NR", True, "srcompress/niqe.m-convention+basicsr-params", 1), env, fn)
