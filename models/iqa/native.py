"""PSNR, SSIM and MS-SSIM exactly as the official (MATLAB-convention) implementations compute them, in float64.

NIQE and PIQE live in ``nss.py``; the colour conversions and filters they share are here.

Why not pyiqa for these: measured on pyiqa's own ``ResultsCalibra`` pairs (tests/models/test_iqa.py),
- pyiqa ``psnr`` adds ``eps=1e-8`` to the MSE on the [0, 1] scale: −0.02 dB at 57 dB (BasicSR/MATLAB: none);
- pyiqa ``ssim``/``ms_ssim`` clamp the contrast-structure map at 0 (ReLU) and run in float32: up to 2e-4 off
  ``ssim_index.m``; its grey level is YIQ's Y unrounded, where MATLAB's ``rgb2gray`` on uint8 rounds.
The pyiqa variants stay registered as ``<name>_pyiqa`` for comparability with papers that report them.

Colour conventions (``color_space``; every metric documents which one it uses by default):
- ``ycbcr``: ITU-R BT.601 Y on [16, 235] (MATLAB ``rgb2ycbcr``; BasicSR ``test_y_channel``), the SR convention;
- ``gray``: MATLAB ``rgb2gray`` — the first row of ``inv`` of the NTSC matrix, 0.2989 R + 0.5870 G + 0.1140 B —
  the input every official MATLAB script of pyiqa's calibration table received (ResultsCalibra.md, notes 2/3/11);
- ``yiq``: 0.299 R + 0.587 G + 0.114 B, pyiqa's default.
Metrics whose MATLAB script reads a uint8 grey image round it (half away from zero, as MATLAB's uint8 cast).

- **PSNR** (BasicSR ``calculate_psnr``): unrounded luma (or RGB with ``y_channel=False``: the
  ``skimage.metrics.peak_signal_noise_ratio`` convention of pyiqa's calibration table), peak 255.
- **SSIM** (Wang et al., ``ssim_index.m``): rounded luma, 11×11 Gaussian σ = 1.5, 'valid' filtering,
  K = (0.01, 0.03), L = 255. ``downsample`` reproduces ``ssim.m``'s automatic ``f = max(1, round(min(H, W) / 256))``
  box filter ('symmetric') + subsampling.
- **MS-SSIM** (Wang, Simoncelli & Bovik 2003, ``msssim.m`` + ``ssim_index_new.m``): SSIM's maps at five
  scales; between scales a 2×2 box filter ('symmetric', 'same') keeps every second pixel; the result is
  ``prod(cs_1..4 ** w_1..4) * ssim_5 ** w_5`` with w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) — msssim.m's
  default ``method = 'product'``, the paper's formula. ``ms_ssim_method = "wtd_sum"`` is msssim.m's other
  combination, ``sum(w_1..4 · cs_1..4) + w_5 · ssim_5`` with w normalised to sum 1: it is what produced the
  official ``rgb2gray`` row of pyiqa's calibration table (all five pairs to the printed 4 decimals), while the
  ``ycbcr`` row of the same repository (``ms_ssim_org_result.txt``) is the product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from srcompress.models.iqa.registry import ImageTooSmall, MetricEnv, MetricInfo, register

Tensor = torch.Tensor
_BT601 = (65.481, 128.553, 24.966)
_YIQ_Y = (0.299, 0.587, 0.114)
# MATLAB rgb2gray: T = inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]); coef = T(1, :).
_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
COLOR_SPACES = ("ycbcr", "gray", "yiq")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def luma(x01: Tensor, color_space: str = "ycbcr") -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) grey level on the 8-bit scale, float64, unrounded."""
    x = x01.double()
    if color_space == "ycbcr":
        return 16.0 + sum(c * x[:, i : i + 1] for i, c in enumerate(_BT601))
    if color_space == "gray":  # rgb2gray weighs the uint8 values themselves
        return sum(c * (255.0 * x[:, i : i + 1]) for i, c in enumerate(_RGB2GRAY))
    if color_space == "yiq":
        return 255.0 * sum(c * x[:, i : i + 1] for i, c in enumerate(_YIQ_Y))
    raise ValueError(f"unknown colour space {color_space!r} ({' | '.join(COLOR_SPACES)})")


def matlab_round(x: Tensor) -> Tensor:
    """MATLAB's uint8 cast of non-negative values: round half away from zero (torch.round is half-to-even)."""
    return torch.floor(x + 0.5)


def grey8(x01: Tensor, color_space: str, crop_border: int = 0) -> Tensor:
    """The uint8 grey image a MATLAB script receives (``rgb2gray``/``rgb2ycbcr`` on uint8), as float64."""
    return matlab_round(_crop(luma(x01, color_space), crop_border))


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
    """(size, size) float64 ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2
    ax = torch.arange(size, dtype=torch.float64) - r
    g = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def pad_symmetric(x: Tensor, lo: int, hi: int) -> Tensor:
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
    return F.avg_pool2d(pad_symmetric(x, lo, f - 1 - lo), f, stride=1)[..., ::f, ::f]


def _halve(x: Tensor) -> Tensor:
    """msssim.m between scales: imfilter(x, ones(2)/4, 'symmetric', 'same'), then x(1:2:end, 1:2:end).

    The 2×2 kernel's origin is its top-left tap, so output i averages pixels i and i+1 and only the last
    row/column is mirrored; keeping odd (1-based) pixels makes that a 2×2 mean pool with ceil(n/2) outputs."""
    return F.avg_pool2d(pad_symmetric(x, 0, 1), 2, stride=2)


def _ssim_means(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(mean SSIM, mean contrast-structure) of (B, 1, H, W) grey images on [0, 255] (ssim_index_new.m)."""
    g = gaussian_1d(11, 1.5)

    def f(t: Tensor) -> Tensor:  # the 2-D Gaussian is separable: two 1-D 'valid' passes, ~5× faster
        return F.conv2d(F.conv2d(t, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    cs = (2 * s12 + c2) / (s1 + s2 + c2)
    lum = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ssim(sr: Tensor, hq: Tensor, crop_border: int = 0, color_space: str = "ycbcr", downsample: bool = False) -> Tensor:
    a, b = grey8(sr, color_space, crop_border), grey8(hq, color_space, crop_border)
    if downsample:
        a, b = _matlab_downsample(a), _matlab_downsample(b)
    return _ssim_means(a, b)[0]


MS_SSIM_METHODS = ("product", "wtd_sum")


def ms_ssim_grey(a: Tensor, b: Tensor, method: str = "product") -> Tensor:
    """msssim.m on (B, 1, H, W) grey images on [0, 255] (no rounding here: the caller's convention);
    ``method`` is msssim.m's: ``product`` (default, the paper) or ``wtd_sum`` (module docstring)."""
    if method not in MS_SSIM_METHODS:
        raise ValueError(f"ms_ssim method {method!r}: expected one of {MS_SSIM_METHODS}")
    means = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        s, cs = _ssim_means(a, b)
        means.append(s if level == len(MS_SSIM_WEIGHTS) - 1 else cs)
        a, b = _halve(a), _halve(b)
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=means[0].dtype, device=means[0].device)
    m = torch.stack(means)  # (levels, B)
    if method == "wtd_sum":
        return ((w / w.sum())[:, None] * m).sum(dim=0)
    # A negative mean (anti-correlated images) has no real fractional power; MATLAB returns a complex
    # number there. Clamping to 0 scores such pairs 0 instead of NaN.
    return (m.clamp(min=0) ** w[:, None]).prod(dim=0)


def ms_ssim(sr: Tensor, hq: Tensor, crop_border: int = 0, color_space: str = "ycbcr",
            method: str = "product") -> Tensor:
    """MS-SSIM on the uint8 grey level of ``color_space``: ``ycbcr`` (default, as SSIM-Y) or ``gray`` (the
    ``rgb2gray`` input of pyiqa's official MATLAB values)."""
    return ms_ssim_grey(grey8(sr, color_space, crop_border), grey8(hq, color_space, crop_border), method)


# ---- registry entries ----------------------------------------------------------------------------------


class NativeMetric:
    """A float64 metric function behind the registry's calling convention (size checks, clamping)."""

    def __init__(self, info: MetricInfo, env: MetricEnv, fn: Callable[[Tensor, Tensor | None], Tensor]):
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
def _psnr(env: MetricEnv) -> NativeMetric:
    return NativeMetric(MetricInfo("psnr", "FR", False, "srcompress/basicsr-convention", 1), env,
                        lambda a, b: psnr(a, b, env.crop_border, env.color_space, env.test_y_channel))


@register("ssim")
def _ssim(env: MetricEnv) -> NativeMetric:
    return NativeMetric(MetricInfo("ssim", "FR", False, "srcompress/ssim_index.m-convention", 11), env,
                        lambda a, b: ssim(a, b, env.crop_border, env.color_space, env.ssim_downsample))


@register("ms_ssim")
def _ms_ssim(env: MetricEnv) -> NativeMetric:
    # Five dyadic scales of an 11-tap window: 11·2⁴ = 176 px is the smallest image msssim.m accepts.
    # ``ssim_downsample`` does not apply: msssim.m has no automatic down-sampling.
    return NativeMetric(MetricInfo("ms_ssim", "FR", False, "srcompress/msssim.m-convention", 176), env,
                        lambda a, b: ms_ssim(a, b, env.crop_border, env.color_space, env.ms_ssim_method))
