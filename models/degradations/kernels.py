"""Blur kernels of the Real-ESRGAN degradation, as small pure numpy functions.

Formulas follow BasicSR ``basicsr/data/degradations.py`` (sigma_matrix2, mesh_grid, pdf2,
bivariate_Gaussian, bivariate_generalized_Gaussian, bivariate_plateau, random_mixed_kernels,
circular_lowpass_kernel) and the kernel draw in ``basicsr/data/realesrgan_dataset.py``; the kernels are
checked against BasicSR's functions in ``tests/models/test_degradations_basicsr.py``. Every random draw
takes an explicit ``numpy.random.Generator`` so a pair depends only on its own seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special

from srcompress.models.degradations.config import KernelConfig

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def sigma_matrix2(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Covariance of a rotated 2-D Gaussian: U diag(sx², sy²) Uᵀ."""
    d = np.diag([sig_x**2, sig_y**2])
    u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return u @ d @ u.T


def mesh_grid(kernel_size: int) -> np.ndarray:
    """(k, k, 2) grid of (x, y) offsets centred on the kernel's middle pixel."""
    ax = np.arange(-kernel_size // 2 + 1.0, kernel_size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _mahalanobis(sigma: np.ndarray, grid: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(sigma)
    return np.sum((grid @ inv) * grid, axis=-1)


def _normalise(k: np.ndarray) -> np.ndarray:
    return (k / np.sum(k)).astype(np.float32)


def bivariate_gaussian(size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> np.ndarray:
    sigma = np.diag([sig_x**2, sig_x**2]) if isotropic else sigma_matrix2(sig_x, sig_y, theta)
    return _normalise(np.exp(-0.5 * _mahalanobis(sigma, mesh_grid(size))))


def bivariate_generalized_gaussian(size: int, sig_x: float, sig_y: float, theta: float, beta: float,
                                   isotropic: bool) -> np.ndarray:
    """exp(-½ (xᵀΣ⁻¹x)^β): heavier (β<1) or lighter (β>1) tails than a Gaussian."""
    sigma = np.diag([sig_x**2, sig_x**2]) if isotropic else sigma_matrix2(sig_x, sig_y, theta)
    return _normalise(np.exp(-0.5 * np.power(_mahalanobis(sigma, mesh_grid(size)), beta)))


def bivariate_plateau(size: int, sig_x: float, sig_y: float, theta: float, beta: float,
                      isotropic: bool) -> np.ndarray:
    """1 / ((xᵀΣ⁻¹x)^β + 1): a flat-topped kernel."""
    sigma = np.diag([sig_x**2, sig_x**2]) if isotropic else sigma_matrix2(sig_x, sig_y, theta)
    return _normalise(np.reciprocal(np.power(_mahalanobis(sigma, mesh_grid(size)), beta) + 1))


def _split_beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    # BasicSR: with p=0.5 draw from [beta_min, 1), else from [1, beta_max].
    if rng.uniform() < 0.5:
        return float(rng.uniform(beta_range[0], 1))
    return float(rng.uniform(1, beta_range[1]))


def random_mixed_kernel(rng: np.random.Generator, kernel_list: Sequence[str], kernel_prob: Sequence[float],
                        size: int, sigma_range: Sequence[float], betag_range: Sequence[float],
                        betap_range: Sequence[float], rotation_range: Sequence[float] = (-math.pi, math.pi)
                        ) -> tuple[np.ndarray, str]:
    """Draw one Gaussian-family kernel. Returns (kernel, type name)."""
    p = np.asarray(kernel_prob, dtype=np.float64)
    kind = str(kernel_list[int(rng.choice(len(kernel_list), p=p / p.sum()))])
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sig_x = float(rng.uniform(*sigma_range))
    if iso:
        sig_y, theta = sig_x, 0.0
    else:
        sig_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(*rotation_range))
    if kind in ("iso", "aniso"):
        k = bivariate_gaussian(size, sig_x, sig_y, theta, iso)
    elif kind.startswith("generalized"):
        k = bivariate_generalized_gaussian(size, sig_x, sig_y, theta, _split_beta(rng, betag_range), iso)
    elif kind.startswith("plateau"):
        k = bivariate_plateau(size, sig_x, sig_y, theta, _split_beta(rng, betap_range), iso)
    else:  # guarded by the config's Literal, kept for direct callers
        raise ValueError(f"unknown kernel type {kind!r} (known: {', '.join(KERNEL_TYPES)})")
    return k, kind


def circular_lowpass_kernel(cutoff: float, size: int) -> np.ndarray:
    """2-D sinc (ideal circular low-pass) kernel: ω_c J1(ω_c r) / (2π r), centre ω_c² / (4π)."""
    if size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(x - c, y - c)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    k[int(c), int(c)] = cutoff**2 / (4 * np.pi)
    return _normalise(k)


def pad_kernel(k: np.ndarray, pad_to: int) -> np.ndarray:
    pad = (pad_to - k.shape[0]) // 2
    return np.pad(k, ((pad, pad), (pad, pad))) if pad > 0 else k


def pulse_kernel(size: int) -> np.ndarray:
    k = np.zeros((size, size), dtype=np.float32)
    k[size // 2, size // 2] = 1
    return k


def draw_blur_kernel(rng: np.random.Generator, kcfg: KernelConfig) -> tuple[np.ndarray, str]:
    """The per-image kernel draw of RealESRGANDataset.__getitem__ (kernel 1 or kernel 2; docs/methods.md §1.1).

    ``kcfg``: sizes, sinc_prob, kernel_list/prob, blur_sigma, betag/betap, pad_to.
    """
    size = int(rng.choice(kcfg.kernel_sizes))
    if rng.uniform() < kcfg.sinc_prob:
        # BasicSR: small kernels get a narrower cutoff range to avoid ringing-only kernels.
        omega = float(rng.uniform(math.pi / 3, math.pi)) if size < 13 else float(rng.uniform(math.pi / 5, math.pi))
        k, kind = circular_lowpass_kernel(omega, size), "sinc"
    else:
        k, kind = random_mixed_kernel(rng, kcfg.kernel_list, kcfg.kernel_prob, size, kcfg.blur_sigma,
                                      kcfg.betag_range, kcfg.betap_range)
    return pad_kernel(k, kcfg.pad_to), kind


def draw_final_sinc(rng: np.random.Generator, prob: float, sizes: Sequence[int], pad_to: int) -> np.ndarray:
    """Final sinc filter with p=final_sinc_prob (cutoff U[π/3, π]), else an identity pulse."""
    if rng.uniform() < prob:
        size = int(rng.choice(list(sizes)))
        return pad_kernel(circular_lowpass_kernel(float(rng.uniform(math.pi / 3, math.pi)), size), pad_to)
    return pulse_kernel(pad_to)
