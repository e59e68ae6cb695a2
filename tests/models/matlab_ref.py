"""Independent NumPy references for the SR metric conventions (written from the published algorithms, not
from pyiqa nor from ``models/iqa``): BasicSR/MATLAB PSNR-Y, SSIM (``ssim_index.m``), MS-SSIM (``msssim.m``),
MATLAB ``imresize`` (bicubic, antialiased) and MATLAB NIQE (Mittal et al. 2013, ``computequality.m``/
``computefeature.m``/``estimateaggdparam.m``), NIQE with local statistics taken from neighbourhood
differences so that constant windows give exactly 0 (the convention ``models/iqa/nss.py`` documents)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal
from scipy.special import gamma


def y_channel(rgb01: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] → BT.601 Y on [16, 235] (MATLAB rgb2ycbcr coefficients), float64."""
    return 16.0 + rgb01 @ np.array([65.481, 128.553, 24.966])


def gray(rgb01: np.ndarray) -> np.ndarray:
    """MATLAB rgb2gray weights (first row of the inverse NTSC matrix) on the 8-bit values, unrounded."""
    coef = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]
    return (255.0 * rgb01) @ coef


def uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's cast to uint8 of values in [0, 255]: round half away from zero."""
    return np.floor(x + 0.5)


def psnr_y(a01: np.ndarray, b01: np.ndarray, crop: int = 0) -> float:
    """BasicSR calculate_psnr(test_y_channel=True): unrounded Y, peak 255."""
    a, b = y_channel(a01), y_channel(b01)
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def _gauss(size: int, sigma: float) -> np.ndarray:
    r = (size - 1) / 2
    x, y = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1))
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_index(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """ssim_index_new.m: (mean SSIM, mean contrast-structure), 11×11 Gaussian σ=1.5, 'valid', L = 255."""
    w = _gauss(11, 1.5)
    f = lambda x: signal.correlate2d(x, w, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    cs = (2 * s12 + c2) / (s1 + s2 + c2)
    return float(np.mean((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs)), float(np.mean(cs))


def ssim_y(a01: np.ndarray, b01: np.ndarray, crop: int = 0) -> float:
    """Wang et al. SSIM on MATLAB-rounded Y (uint8 rgb2ycbcr), 11×11 Gaussian σ=1.5, 'valid' filtering."""
    a, b = uint8(y_channel(a01)), uint8(y_channel(b01))
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return _ssim_index(a, b)[0]


def ms_ssim(a: np.ndarray, b: np.ndarray, method: str = "product") -> float:
    """msssim.m on two grey images: 5 scales, 2×2 mean filter ('symmetric', 'same') + every 2nd pixel;
    ``method`` 'product' (its default) or 'wtd_sum' (weights normalised to sum 1, then a weighted sum)."""
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    means = []
    for level in range(len(weights)):
        s, cs = _ssim_index(a, b)
        means.append(s if level == len(weights) - 1 else cs)
        a, b = (signal.correlate2d(np.pad(x, ((0, 1), (0, 1)), mode="symmetric"), np.full((2, 2), 0.25),
                                   mode="valid")[::2, ::2] for x in (a, b))
    if method == "wtd_sum":
        return float(np.sum(weights / weights.sum() * np.array(means)))
    return float(np.prod(np.array(means) ** weights))


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    width = 4.0 / scale if scale < 1 else 4.0  # antialiasing widens the kernel when shrinking
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    wts = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    wts /= wts.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])  # symmetric padding
    idx = mirror[np.mod(idx.astype(int) - 1, 2 * n_in)]
    keep = np.any(wts != 0, axis=0)
    return wts[:, keep], idx[:, keep]


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize(img, scale, 'bicubic') with antialiasing, 2-D float (rows first, taps in order)."""
    h, w = img.shape
    wh, ih = _contributions(h, int(math.ceil(h * scale)), scale)
    out = sum(wh[:, k, None] * img[ih[:, k]] for k in range(wh.shape[1]))
    ww, iw = _contributions(w, int(math.ceil(w * scale)), scale)
    return sum(ww[None, :, k] * out[:, iw[:, k]] for k in range(ww.shape[1]))


_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


def aggd(x: np.ndarray) -> tuple[float, float, float]:
    """estimateaggdparam.m: (alpha, beta_left, beta_right) by moment matching over the 0.001 grid."""
    x = x.ravel()
    left, right = np.sqrt(np.mean(x[x < 0] ** 2)), np.sqrt(np.mean(x[x > 0] ** 2))
    g = left / right
    r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    rn = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM - rn) ** 2)]
    k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * k, right * k


def _features(block: np.ndarray) -> list[float]:
    a, bl, br = aggd(block)
    feats = [a, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # computefeature.m (circshift)
        a, bl, br = aggd(block * np.roll(block, shift, axis=(0, 1)))
        feats += [a, (br - bl) * gamma(2 / a) / gamma(1 / a), bl, br]
    return feats


def niqe(y: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray, block: int = 96) -> float:
    """niqe.m on a grey image in [0, 255] (already rounded), 96×96 blocks, two scales."""
    h, w = y.shape
    nh, nw = h // block, w // block
    img = y[: nh * block, : nw * block].astype(np.float64)
    win = _gauss(7, 7 / 6)
    per_scale = []
    for scale in (1, 2):
        # Local mean/variance of the differences to the centre pixel ('replicate' borders): shift-invariant,
        # so equal to imfilter's statistics. Differences are summed per ring of equal weight first (exact on
        # integers), so a window whose weighted mean is its centre in exact arithmetic gives exactly 0.
        diff = sliding_window_view(np.pad(img, 3, mode="edge"), (7, 7)) - img[:, :, None, None]
        rings = [(wt, win == wt) for wt in np.unique(win)]
        mean_d = sum(wt * diff[:, :, m].sum(-1) for wt, m in rings)
        sigma = np.sqrt(np.abs(sum(wt * (diff[:, :, m] ** 2).sum(-1) for wt, m in rings) - mean_d**2))
        mscn = -mean_d / (sigma + 1)
        b = block // scale
        per_scale.append(np.array([_features(mscn[i * b : (i + 1) * b, j * b : (j + 1) * b])
                                   for j in range(nw) for i in range(nh)]))
        img = imresize(img, 0.5)
    feats = np.concatenate(per_scale, axis=1)
    mu_d = np.nanmean(feats, axis=0)
    cov_d = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    d = (mu_p.ravel() - mu_d)
    m = (cov_p + cov_d) / 2  # MATLAB pinv tolerance: max(size) · σ_max · eps
    return float(np.sqrt(d @ np.linalg.pinv(m, rcond=max(m.shape) * np.finfo(np.float64).eps) @ d))
