"""Numerics of the Real-ESRGAN degradation: kernels, noise, JPEG, USM, determinism, preset parameters."""

from __future__ import annotations

import math
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from srcompress.models.degradations import degrade_batch, draw_params
from srcompress.models.degradations import kernels as K
from srcompress.models.degradations import ops
from srcompress.models.degradations.jpeg import jpeg, quality_to_factor
from srcompress.tasks.degrade.config import DegradeConfig, KernelConfig


def _cov(k: np.ndarray) -> np.ndarray:
    """Second moments of a kernel around its centre: the covariance of the blur it applies."""
    g = K.mesh_grid(k.shape[0])
    w = k / k.sum()
    x, y = g[..., 0], g[..., 1]
    return np.array([[np.sum(w * x * x), np.sum(w * x * y)], [np.sum(w * x * y), np.sum(w * y * y)]])


def test_gaussian_kernels_are_normalised_with_the_requested_covariance():
    iso = K.bivariate_gaussian(21, 2.0, 2.0, 0.0, isotropic=True)
    assert iso.shape == (21, 21) and abs(iso.sum() - 1) < 1e-6
    assert np.allclose(iso, iso.T) and np.allclose(iso, iso[::-1, ::-1])
    assert np.allclose(_cov(iso), np.diag([4.0, 4.0]), atol=0.05)
    theta = math.pi / 6
    aniso = K.bivariate_gaussian(31, 3.0, 1.0, theta, isotropic=False)
    assert np.allclose(_cov(aniso), K.sigma_matrix2(3.0, 1.0, theta), atol=0.1)
    assert not np.allclose(aniso, aniso.T)


def test_generalized_and_plateau_shapes():
    g_heavy = K.bivariate_generalized_gaussian(21, 2.0, 2.0, 0, beta=0.5, isotropic=True)
    g_light = K.bivariate_generalized_gaussian(21, 2.0, 2.0, 0, beta=4.0, isotropic=True)
    gauss = K.bivariate_gaussian(21, 2.0, 2.0, 0, isotropic=True)
    for k in (g_heavy, g_light):
        assert abs(k.sum() - 1) < 1e-6 and k.argmax() == 220  # centre of 21x21
    # beta < 1: heavier tails than a Gaussian; beta > 1: flatter top (lighter tails)
    assert g_heavy[10, 20] > gauss[10, 20] > g_light[10, 20]
    plateau = K.bivariate_plateau(21, 2.0, 2.0, 0, beta=2.0, isotropic=True)
    assert abs(plateau.sum() - 1) < 1e-6
    assert plateau[10, 11] / plateau[10, 10] > gauss[10, 11] / gauss[10, 10]  # flat top


def test_sinc_kernel():
    k = K.circular_lowpass_kernel(math.pi / 3, 13)
    assert abs(k.sum() - 1) < 1e-6 and np.allclose(k, k.T) and k.argmax() == 6 * 13 + 6
    assert (k < 0).any()  # ringing lobes: that is the point of the sinc kernel
    with pytest.raises(ValueError):
        K.circular_lowpass_kernel(1.0, 12)


def test_kernel_draw_families_and_padding():
    rng = np.random.default_rng(0)
    cfg = KernelConfig()
    kinds = Counter()
    for _ in range(3000):
        k, kind = K.draw_blur_kernel(rng, cfg)
        assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-5
        kinds[kind] += 1
    assert abs(kinds["sinc"] / 3000 - 0.1) < 0.03
    gauss = 3000 - kinds["sinc"]
    assert abs(kinds["iso"] / gauss - 0.45) < 0.04 and abs(kinds["aniso"] / gauss - 0.25) < 0.04
    only_iso = KernelConfig(kernel_list=["iso"], kernel_prob=[1.0], sinc_prob=0.0)
    assert {K.draw_blur_kernel(rng, only_iso)[1] for _ in range(50)} == {"iso"}


def test_final_sinc_probability():
    rng = np.random.default_rng(1)
    pulses = sum(np.count_nonzero(K.draw_final_sinc(rng, 0.8, [7, 9], 21)) == 1 for _ in range(2000))
    assert abs(pulses / 2000 - 0.2) < 0.03


def test_filter2d_per_sample_kernels_match_cv2():
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    k = torch.from_numpy(np.stack([K.bivariate_gaussian(7, 1.5, 1.5, 0, True), K.pulse_kernel(7)]))
    y = ops.filter2d(x, k)
    assert torch.allclose(y[1], x[1])  # pulse = identity
    ref = cv2.filter2D(x[0].permute(1, 2, 0).numpy(), -1, k[0].numpy(), borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(y[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_usm_separable_equals_2d_and_sharpens():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    k1 = ops.cv2_gaussian_1d(51)
    assert torch.allclose(k1.double(), torch.from_numpy(cv2.getGaussianKernel(51, 0)[:, 0]), atol=1e-7)
    sep = ops.separable_filter(x, k1)
    full = ops.filter2d(x, torch.outer(k1, k1))
    assert torch.allclose(sep, full, atol=1e-5)
    smooth = ops.filter2d(x, torch.from_numpy(K.bivariate_gaussian(9, 2, 2, 0, True)))
    sharp = ops.usm_sharp(smooth)
    hf = lambda t: (t - ops.separable_filter(t, ops.cv2_gaussian_1d(5))).abs().mean()  # noqa: E731
    assert hf(sharp) > hf(smooth) and sharp.min() >= 0 and sharp.max() <= 1


def test_gaussian_noise_statistics_and_gray():
    x = torch.full((1, 3, 256, 256), 0.5)
    g = torch.Generator().manual_seed(0)
    n = ops.gaussian_noise(x, 20.0, gray=False, gen=g)
    assert abs(n.std().item() - 20 / 255) < 0.002 and abs(n.mean().item()) < 0.001
    assert not torch.equal(n[:, 0], n[:, 1])
    ng = ops.gaussian_noise(x, 20.0, gray=True, gen=g)
    assert torch.equal(ng[:, 0], ng[:, 1]) and torch.equal(ng[:, 1], ng[:, 2])


def test_poisson_noise_statistics():
    x = torch.full((1, 3, 128, 128), 0.5)
    x[..., :64] = 0.25  # 2 distinct levels → vals = 2 photon levels per unit
    n = ops.poisson_noise(x, scale=1.0, gray=False, gen=torch.Generator().manual_seed(0))
    src = torch.round(x * 255) / 255
    vals = 2.0
    # Var[Poisson(λ)/vals] = λ/vals² = src/vals
    assert abs(n[..., 64:].var().item() - src[..., 64:].mean().item() / vals) < 0.02
    assert abs(n.mean().item()) < 0.02
    ng = ops.poisson_noise(x, scale=0.5, gray=True, gen=torch.Generator().manual_seed(0))
    assert torch.equal(ng[:, 0], ng[:, 2])


def test_jpeg_matches_a_real_codec_and_quality_orders_error():
    from skimage import data

    img = data.astronaut()[100:196, 100:196].astype(np.float32) / 255  # a real photo crop
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    errs = []
    for q in (20, 50, 90):
        ours = jpeg(x, torch.tensor([float(q)]))[0].permute(1, 2, 0).numpy()
        ok, buf = cv2.imencode(".jpg", (img[..., ::-1] * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
        ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
        mse_codec = np.mean((ours - ref) ** 2)
        errs.append(np.mean((ours - img) ** 2))
        # the same codec as libjpeg up to rounding and BasicSR's unrounded table scaling (~40 dB apart)
        assert 10 * np.log10(1 / mse_codec) > 35, q
    assert errs[0] > errs[1] > errs[2]
    assert torch.allclose(quality_to_factor(torch.tensor([25.0, 50.0, 75.0])), torch.tensor([2.0, 1.0, 0.5]))
    # per-sample quality in one batch == one at a time
    xb = x.repeat(2, 1, 1, 1)
    yb = jpeg(xb, torch.tensor([20.0, 90.0]))
    assert torch.allclose(yb[1:], jpeg(x, torch.tensor([90.0])), atol=1e-5)
    odd = jpeg(torch.rand(1, 3, 37, 29), torch.tensor([60.0]))
    assert odd.shape == (1, 3, 37, 29)


@pytest.mark.parametrize("preset", ["realesrgan", "osediff", "seesr", "stablesr"])
def test_pipeline_shapes_range_and_batch_independence(preset):
    cfg = DegradeConfig(preset=preset, crop_size=64)
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seeds = [11, 22, 33, 44, 55]
    lq, hq, params = degrade_batch(x, seeds, cfg)
    side = 64 if cfg.final.resize_back != "none" else 16
    assert lq.shape == (5, 3, side, side) and hq.shape == x.shape and len(params) == 5
    assert lq.min() >= 0 and lq.max() <= 1
    if cfg.final.quantize:
        assert torch.equal(lq, torch.round(lq * 255) / 255)
    # each pair depends on its own seed only: not on batch-mates or position
    lq2, _, _ = degrade_batch(x[[3, 1]], [44, 22], cfg)
    assert torch.equal(lq2, lq[[3, 1]])
    assert not torch.equal(degrade_batch(x[:1], [12], cfg)[0], lq[:1])
    if cfg.usm.save_sharpened_gt:
        assert not torch.equal(hq, x)
    else:
        assert torch.equal(hq, x)


def test_preset_parameters_reach_the_draws():
    rng = np.random.default_rng(0)
    ss = DegradeConfig(preset="stablesr", crop_size=64)
    re = DegradeConfig(preset="realesrgan", crop_size=64)
    draws_ss = [draw_params(rng, ss) for _ in range(400)]
    draws_re = [draw_params(rng, re) for _ in range(400)]
    assert all(60 <= d.jpeg1 <= 95 and 60 <= d.jpeg2 <= 100 for d in draws_ss)
    assert min(d.jpeg1 for d in draws_re) < 40
    gauss = [d.noise1.amount for d in draws_ss if d.noise1.gaussian]
    assert max(gauss) <= 15 and max(d.noise1.amount for d in draws_re if d.noise1.gaussian) > 20
    assert all(0.6 <= d.resize2.scale <= 1.2 for d in draws_ss)
    kinds = Counter(d.resize1.kind for d in draws_re)
    assert abs(kinds["down"] / 400 - 0.7) < 0.08 and abs(kinds["up"] / 400 - 0.2) < 0.08
    assert abs(sum(d.blur2 for d in draws_ss) / 400 - 0.5) < 0.08
    assert abs(sum(d.blur2 for d in draws_re) / 400 - 0.8) < 0.08
    assert abs(sum(d.order_a for d in draws_re) / 400 - 0.5) < 0.08
    assert abs(sum(d.noise1.gray for d in draws_re) / 400 - 0.4) < 0.08


def test_degradation_actually_degrades():
    # A smooth image: LQ upsampled back is close to, but not equal to, the HQ.
    base = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    hq = torch.nn.functional.interpolate(base, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    cfg = DegradeConfig(preset="stablesr", crop_size=64)
    lq, _, _ = degrade_batch(hq, [5], cfg)
    up = torch.nn.functional.interpolate(lq, size=(64, 64), mode="bicubic", align_corners=False)
    mse = torch.mean((up - hq) ** 2).item()
    assert 1e-5 < mse < 0.05
