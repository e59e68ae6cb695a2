"""The Real-ESRGAN degradation against BasicSR's own functions, for fixed parameters (issue 17).

BasicSR 1.4.2's ``degradations.py``, ``diffjpeg.py`` and ``img_process_util.py`` are loaded from the pinned
sdist, and the resize calls and final quantisation of ``realesrgan_model.py`` are compiled from its source
(``tests/models/basicsr_ref.py``). Each step is compared with fixed kernel parameters, scales, noise seeds
and JPEG qualities, not the random samplers; then the whole sequence, for the draws of ten seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srcompress.infra.assets import AssetUnavailable, basicsr_sdist_members
from srcompress.models.degradations import DegradationConfig, degrade_batch
from srcompress.models.degradations import kernels as K
from srcompress.models.degradations import ops
from srcompress.models.degradations.jpeg import jpeg
from tests.models import basicsr_ref

# Bounds in 8-bit levels (1 level = 1/255). One level where a rounding can flip (JPEG, quantise, the whole
# sequence). Steps without rounding agree to float32 precision (measured ≤ 3e-4 levels): a bound of one level
# would hide a bug worth half a level, such as an extra rounding of the noisy image.
LEVEL = 1.0
FLOAT = 0.01


def _photo(top: int, left: int, size: int) -> torch.Tensor:
    from skimage import data

    img = data.astronaut()[top:top + size, left:left + size].astype(np.float32) / 255  # a real photo crop
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def _levels(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest absolute difference, in 8-bit levels."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max() * 255)


@pytest.fixture(scope="module")
def bsr(tmp_path_factory: pytest.TempPathFactory) -> basicsr_ref.BasicSR:
    try:
        return basicsr_ref.load_basicsr(tmp_path_factory.mktemp("basicsr"))
    except AssetUnavailable as exc:  # CI machines reach the package registry; say so loudly if not
        pytest.fail(f"BasicSR's source could not be obtained from the basicsr sdist: {exc}")


def test_reference_is_the_pinned_sdist(tmp_path, monkeypatch):
    """Another file under the sdist's name is refused and not cached: the reference is basicsr 1.4.2 only."""
    monkeypatch.setenv("SRCOMPRESS_ASSETS", str(tmp_path / "assets"))
    fake = tmp_path / "basicsr-1.4.2.tar.gz"
    fake.write_bytes(b"not basicsr")
    with pytest.raises(AssetUnavailable, match="sha256"):
        basicsr_sdist_members([basicsr_ref.PREFIX + basicsr_ref.MODULES["diffjpeg"]], source=str(fake))
    assert not (tmp_path / "assets").exists()


def test_kernels_match_basicsr(bsr):
    d = bsr.degradations
    pairs = []
    # sx != sy and θ off the axes: a rotation applied the wrong way round changes the kernel
    for size, sx, sy, th in ((7, 0.2, 0.2, 0.0), (13, 1.3, 2.7, 0.7), (21, 3.0, 0.5, -2.5), (21, 2.0, 1.0, 1.2)):
        for iso in (True, False):
            pairs.append((K.bivariate_gaussian(size, sx, sy, th, iso), d.bivariate_Gaussian(size, sx, sy, th, isotropic=iso)))
            for beta in (0.5, 1.0, 3.7):
                pairs.append((K.bivariate_generalized_gaussian(size, sx, sy, th, beta, iso),
                              d.bivariate_generalized_Gaussian(size, sx, sy, th, beta, isotropic=iso)))
                pairs.append((K.bivariate_plateau(size, sx, sy, th, beta, iso),
                              d.bivariate_plateau(size, sx, sy, th, beta, isotropic=iso)))
    with np.errstate(divide="ignore", invalid="ignore"):  # BasicSR divides by r = 0 at the centre, then overwrites it
        for size in (7, 13, 21):
            for omega in (math.pi / 5, 1.0, 2.5, math.pi):
                pairs.append((K.pad_kernel(K.circular_lowpass_kernel(omega, size), 21),
                              d.circular_lowpass_kernel(omega, size, pad_to=21)))
    # Σ|Δk| bounds the change of any filtered image in [0, 1], so ×255 is a bound in 8-bit levels
    worst = max(float(np.abs(ours.astype(np.float64) - ref).sum()) * 255 for ours, ref in pairs)
    assert all(ours.shape == ref.shape for ours, ref in pairs) and worst <= FLOAT, worst


def test_filter2d_and_usm_match_basicsr(bsr):
    ipu = bsr.img_process_util
    x = _photo(100, 100, 64)
    xb = torch.cat([x, x.flip(-1)])
    k = torch.from_numpy(np.stack([K.bivariate_gaussian(21, 2.5, 0.8, 0.6, False),
                                   K.pad_kernel(K.circular_lowpass_kernel(1.1, 13), 21)]))
    assert _levels(ops.filter2d(xb, k), ipu.filter2D(xb, k)) <= FLOAT  # one kernel per sample
    assert _levels(ops.filter2d(xb, k[:1]), ipu.filter2D(xb, k[:1])) <= FLOAT  # BasicSR's shared-kernel path
    assert _levels(ops.usm_sharp(x), ipu.USMSharp()(x)) <= FLOAT
    assert _levels(ops.usm_sharp(x, 20, 0.8, 5.0), ipu.USMSharp(radius=20)(x, weight=0.8, threshold=5)) <= FLOAT


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resizes_are_basicsr_feed_data_calls(bsr, mode):
    """bsr.resizes are compiled from realesrgan_model.py: stage 1 by scale factor, the others to a size."""
    x = _photo(90, 110, 64)
    x = x[..., :48]  # not square: a swapped height and width shows
    r1, r2, r3a, r3b = bsr.resizes
    env = basicsr_ref.resize_env(4)
    for scale in (0.15, 0.37, 0.7, 1.0, 1.3, 1.5):
        assert _levels(ops.rescale(x, scale, mode), r1(out=x, scale=scale, mode=mode, **env)) <= FLOAT, scale
        ref2 = r2(out=x, scale=scale, mode=mode, ori_h=64, ori_w=48, **env)
        assert _levels(ops.resize(x, (int(64 / 4 * scale), int(48 / 4 * scale)), mode), ref2) <= FLOAT, scale
    for r3 in (r3a, r3b):
        assert _levels(ops.resize(x, (64 // 4, 48 // 4), mode), r3(out=x, mode=mode, ori_h=64, ori_w=48, **env)) <= FLOAT


@pytest.mark.parametrize("gaussian", [True, False], ids=["gaussian", "poisson"])
@pytest.mark.parametrize("gray", [False, True], ids=["colour", "gray"])
def test_noise_matches_basicsr_with_the_same_draws(bsr, gaussian, gray):
    """One noise step makes the same RNG calls as BasicSR's (its gray path draws the gray noise first, then
    colour noise it discards), so the same seed gives the same noise: compared whole, not just its scaling."""
    x = _photo(60, 140, 48)
    blurred = ops.filter2d(x, torch.from_numpy(K.bivariate_gaussian(7, 1.2, 1.2, 0, True)))  # off the 8-bit grid
    amount = 17.3 if gaussian else 1.7
    for img in (x, blurred):
        for seed in (0, 7):
            ours = ops.add_noise(img, gaussian, amount, gray, torch.Generator().manual_seed(seed))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                ref = basicsr_ref.add_noise(bsr, img, gaussian, amount, gray)
            assert _levels(ours, ref) <= FLOAT, seed
            assert (ours - img).abs().max() * 255 > 5  # the noise is there


@torch.no_grad()
def test_jpeg_matches_basicsr_diffjpeg(bsr):
    jpeger = bsr.diffjpeg.DiffJPEG(differentiable=False)
    x = _photo(100, 100, 64)
    q = torch.tensor([10.0, 30.0, 47.3, 50.0, 75.0, 95.0])  # below, at and above 50; a fractional one
    xb = x.repeat(len(q), 1, 1, 1)
    odd = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))  # padded to 48×64 and cropped
    for img, qual in ((xb, q), (odd, q[[1, 4]])):
        ours = jpeg(img, qual)
        ref = jpeger(img, quality=qual.clone())  # clone: DiffJPEG overwrites its quality tensor with factors
        # ≤ 1 level even if a coefficient sits on a rounding tie; the mean shows any systematic difference
        assert _levels(ours, ref) <= LEVEL and (ours - ref).abs().mean() * 255 <= FLOAT
        assert (ours - img).abs().max() * 255 > 10  # compressed


def test_quantize_is_basicsr_final_expression(bsr):
    ties = (torch.arange(256, dtype=torch.float32) + 0.5) / 255  # half levels: the rounding rule shows
    x = torch.cat([torch.linspace(-0.1, 1.1, 20001), ties])
    assert torch.equal(ops.quantize(x), bsr.quantize(x))


# First-stage noise not gray: BasicSR's gray noise also draws colour noise it discards, ours does not, so after
# a gray first stage the two generators part. Chosen to cover every kernel family, resize kind and mode, noise
# family (gray and colour in stage 2), second blur or not, final order and final sinc or pulse.
E2E_SEEDS = [2, 4, 7, 16, 35, 57, 66, 72, 211, 223]


def test_pipeline_matches_basicsr_feed_data_for_fixed_draws(bsr):
    x = _photo(100, 100, 64)
    x = x[..., :48]
    cfg = DegradationConfig()  # realesrgan defaults: USM'd GT degraded, quantised at LQ size, no resize back
    lq, _, params = degrade_batch(x.repeat(len(E2E_SEEDS), 1, 1, 1), E2E_SEEDS, cfg)
    for i, (seed, p) in enumerate(zip(E2E_SEEDS, params)):
        assert not p.noise1.gray
        ref = basicsr_ref.feed_data(bsr, x, p, cfg.scale, seed)
        assert ref.shape == lq[i:i + 1].shape and _levels(lq[i:i + 1], ref) <= LEVEL, seed
    kinds = {(p.resize1.kind, p.resize1.mode) for p in params}
    assert {k for k, _ in kinds} == {"up", "down", "keep"} and {m for _, m in kinds} == {"area", "bilinear", "bicubic"}
    assert {p.order_a for p in params} == {True, False} and {p.noise1.gaussian for p in params} == {True, False}
