"""Numerics of the Real-ESRGAN degradation: kernels, noise, JPEG (and its table orientation), USM,
determinism, the quantisation point, preset parameters, and the import rule of models/degradations."""

from __future__ import annotations

import ast
import io
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from srcompress.models.degradations import DegradationConfig, degrade_batch, draw_params
from srcompress.models.degradations import kernels as K
from srcompress.models.degradations import ops
from srcompress.models.degradations.config import FinalConfig
from srcompress.models.degradations.jpeg import jpeg, quality_to_factor, quant_tables
from srcompress.tasks.degrade.config import DEGRADE_PRESETS, DegradeConfig, KernelConfig

DEGRADATIONS = Path(__file__).resolve().parents[2] / "models" / "degradations"


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


def _photo(top: int = 100, left: int = 100, size: int = 96) -> tuple[np.ndarray, torch.Tensor]:
    from skimage import data

    img = data.astronaut()[top:top + size, left:left + size].astype(np.float32) / 255  # a real photo crop
    return img, torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def test_jpeg_matches_a_real_codec_and_quality_orders_error():
    img, x = _photo()
    errs = []
    for q in (20, 50, 90):
        # libjpeg orientation: the same tables as the real codec (the default, basicsr, is checked below)
        ours = jpeg(x, torch.tensor([float(q)]), tables="libjpeg")[0].permute(1, 2, 0).numpy()
        _, buf = cv2.imencode(".jpg", (img[..., ::-1] * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
        ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
        mse_codec = np.mean((ours - ref) ** 2)
        errs.append(np.mean((ours - img) ** 2))
        # the same codec as libjpeg up to rounding and BasicSR's unrounded table scaling (~40 dB apart)
        assert 10 * np.log10(1 / mse_codec) > 35, q
    assert errs[0] > errs[1] > errs[2]
    assert torch.allclose(quality_to_factor(torch.tensor([25.0, 50.0, 75.0])), torch.tensor([2.0, 1.0, 0.5]))
    # per-sample quality in one batch == one at a time
    xb = x.repeat(2, 1, 1, 1)
    for tables in ("basicsr", "libjpeg"):
        yb = jpeg(xb, torch.tensor([20.0, 90.0]), tables=tables)
        assert torch.allclose(yb[1:], jpeg(x, torch.tensor([90.0]), tables=tables), atol=1e-5)
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
    if cfg.final.quantize != "none":
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


# ---------------------------------------------------------------------------------------------------------
# JPEG quantisation-table orientation (docs/methods.md §1.5)


def _zigzag() -> list[tuple[int, int]]:
    """(row, col) of each zigzag position (T.81 Figure A.6), from the definition, not from any library."""
    cells = [(r, c) for r in range(8) for c in range(8)]
    return sorted(cells, key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 == 0 else p[0]))


def _dqt_from_bytes(data: bytes) -> dict[int, np.ndarray]:
    """Parse the DQT segments of a baseline JPEG file; the file stores tables in zigzag order."""
    out, i = {}, 2
    while i + 4 <= len(data) and data[i + 1] != 0xDA:  # up to start-of-scan
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        while marker == 0xDB and seg:
            assert seg[0] >> 4 == 0  # 8-bit tables
            nat = np.zeros((8, 8), dtype=np.int64)
            for k, (r, c) in enumerate(_zigzag()):
                nat[r, c] = seg[1 + k]
            out[seg[0] & 15] = nat
            seg = seg[65:]
        i += 2 + length
    return out


def _pil_luma_table(quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8), "L").save(buf, "JPEG", quality=quality)
    pil = np.array(Image.open(io.BytesIO(buf.getvalue())).quantization[0]).reshape(8, 8)
    # Pillow (>= 8) returns the tables in natural order (de-zigzagged), not in the file's zigzag order:
    assert np.array_equal(pil, _dqt_from_bytes(buf.getvalue())[0])
    return pil


def test_jpeg_tables_libjpeg_is_the_codecs_table_and_basicsr_its_transpose():
    # quality 50: libjpeg's scale factor is 100%, so its table is Annex K exactly (no rounding, no clipping)
    pil = _pil_luma_table(50)
    y_lib, c_lib = quant_tables(torch.tensor([50.0]), "libjpeg")
    y_bsr, c_bsr = quant_tables(torch.tensor([50.0]), "basicsr")
    assert np.array_equal(y_lib[0].numpy(), pil)
    assert np.array_equal(y_bsr[0].numpy(), pil.T) and not np.array_equal(pil, pil.T)
    # Annex K's chrominance table is symmetric: the orientation only matters for luminance
    assert torch.equal(c_lib, c_bsr)
    # other qualities: equal up to libjpeg's rounding and [1, 255] clipping of the scaled table
    for q in (20, 75, 90):
        pil = _pil_luma_table(q)
        ours = quant_tables(torch.tensor([float(q)]), "libjpeg")[0][0].numpy()
        assert np.abs(np.clip(ours, 1, 255) - pil).max() <= 0.5, q
        assert np.abs(np.clip(quant_tables(torch.tensor([float(q)]), "basicsr")[0][0].numpy(), 1, 255)
                      - pil.T).max() <= 0.5, q


def _single_coefficient_image(u: int, v: int, amplitude: float) -> np.ndarray:
    """16×16 gray image: 128 plus one DCT basis function (vertical frequency u, horizontal v) per 8×8 block."""
    a = lambda k: math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)  # noqa: E731
    n = np.arange(8)
    basis = np.outer(a(u) * np.cos((2 * n + 1) * u * np.pi / 16), a(v) * np.cos((2 * n + 1) * v * np.pi / 16))
    return np.tile(np.round(128 + amplitude * basis), (2, 2)).astype(np.uint8)


def _coefficient(img: np.ndarray, u: int, v: int) -> float:
    a = lambda k: math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)  # noqa: E731
    n = np.arange(8)
    bu = a(u) * np.cos((2 * n + 1) * u * np.pi / 16)
    bv = a(v) * np.cos((2 * n + 1) * v * np.pi / 16)
    return float(bu @ (img[:8, :8].astype(np.float64) - 128) @ bv)


def test_jpeg_table_orientation_by_decoded_pixels():
    """Functional check, independent of how any library reports its tables: a pure horizontal (u=0, v=5) or
    vertical (u=5, v=0) frequency of amplitude 70 is quantised with step 40 or 24 (Annex K [0][5] = 40,
    [5][0] = 24), giving 80 or 72 after decoding. The real codec and our libjpeg orientation agree;
    basicsr swaps the steps."""
    from PIL import Image

    for (u, v), codec_value, swapped_value in (((0, 5), 80, 72), ((5, 0), 72, 80)):
        img = _single_coefficient_image(u, v, 70.0)
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, "JPEG", quality=50)
        decoded = np.array(Image.open(io.BytesIO(buf.getvalue())))
        assert abs(_coefficient(decoded, u, v) - codec_value) < 2.5
        x = torch.from_numpy(img.astype(np.float32) / 255)[None, None].expand(1, 3, 16, 16).contiguous()
        for tables, expected in (("libjpeg", codec_value), ("basicsr", swapped_value)):
            y = jpeg(x, torch.tensor([50.0]), tables=tables)[0, 0].numpy() * 255
            assert abs(_coefficient(y, u, v) - expected) < 1.0, (tables, u, v)


def test_jpeg_tables_change_a_textured_image_and_the_codec_prefers_libjpeg():
    img, x = _photo(180, 180, 128)
    q = torch.tensor([30.0])
    bsr, lib = jpeg(x, q, tables="basicsr"), jpeg(x, q, tables="libjpeg")
    assert not torch.equal(bsr, lib) and (bsr - lib).abs().max() * 255 > 5
    assert torch.equal(jpeg(x, q), bsr)  # basicsr is the default
    _, buf = cv2.imencode(".jpg", (img[..., ::-1] * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 30])
    ref = torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255)
    ref = ref.permute(2, 0, 1)[None]
    assert torch.mean((lib - ref) ** 2) < torch.mean((bsr - ref) ** 2)
    with pytest.raises(ValueError, match="unknown JPEG tables"):
        jpeg(x, q, tables="natural")  # type: ignore[arg-type]


def test_pipeline_threads_jpeg_tables_through_both_jpeg_steps():
    _, x = _photo(150, 150, 64)
    base = {"final": {"final_sinc_prob": 0.0}}
    bsr = DegradationConfig(**base)
    lib = DegradationConfig(**base, jpeg_tables="libjpeg")
    assert bsr.jpeg_tables == "basicsr" and DegradeConfig().jpeg_tables == "basicsr"
    seeds = list(range(6))
    a, _, _ = degrade_batch(x.repeat(6, 1, 1, 1), seeds, bsr)
    b, _, _ = degrade_batch(x.repeat(6, 1, 1, 1), seeds, lib)
    assert all(not torch.equal(a[i], b[i]) for i in range(6))
    with pytest.raises(ValidationError):
        DegradationConfig(jpeg_tables="natural")


# ---------------------------------------------------------------------------------------------------------
# Quantisation point (docs/methods.md §1.4)


def _on_grid(t: torch.Tensor) -> bool:
    return torch.equal(t, torch.round(t * 255) / 255)


def _run(x: torch.Tensor, seeds: list[int], quantize: str, resize_back: str) -> torch.Tensor:
    cfg = DegradationConfig(final={"quantize": quantize, "resize_back": resize_back})
    return degrade_batch(x, seeds, cfg)[0]


def test_quantize_point_without_resize_back():
    _, x = _photo(120, 200, 64)
    x = x.repeat(4, 1, 1, 1)
    seeds = [3, 4, 5, 6]
    q_lq, q_out, q_none = (_run(x, seeds, q, "none") for q in ("lq", "output", "none"))
    assert q_lq.shape == (4, 3, 16, 16)
    assert _on_grid(q_lq) and torch.equal(q_lq, q_out)  # lq and output coincide without a resize back
    assert q_none.min() >= 0 and q_none.max() <= 1 and not _on_grid(q_none)  # clamped, not rounded
    assert torch.equal(ops.quantize(q_none), q_lq)


def test_quantize_lq_rounds_at_lq_size_before_the_resize_back():
    _, x = _photo(120, 200, 64)
    x = x.repeat(4, 1, 1, 1)
    seeds = [3, 4, 5, 6]
    native = _run(x, seeds, "lq", "none")  # rounded at LQ size
    stored = _run(x, seeds, "lq", "bicubic")
    assert stored.shape == (4, 3, 64, 64) and stored.min() >= 0 and stored.max() <= 1
    assert not _on_grid(stored)  # bicubic resizing of 8-bit levels leaves the grid
    expected = torch.cat([torch.clamp(ops.resize(native[i:i + 1], (64, 64), "bicubic"), 0, 1) for i in range(4)])
    assert torch.equal(stored, expected)
    out = _run(x, seeds, "output", "bicubic")
    assert _on_grid(out) and not torch.equal(out, ops.quantize(stored))
    none = _run(x, seeds, "none", "bicubic")
    assert none.min() >= 0 and none.max() <= 1 and not _on_grid(none)
    assert torch.equal(ops.quantize(none), out)  # output = none's stored LQ, rounded
    random_back = _run(x, seeds, "output", "random")
    assert _on_grid(random_back)


def test_quantize_accepts_legacy_booleans_and_rejects_others():
    assert FinalConfig(quantize=True).quantize == "lq" and FinalConfig(quantize=False).quantize == "none"
    assert DegradeConfig(final={"quantize": False}).final.quantize == "none"
    assert DegradeConfig(preset="seesr", final={"quantize": True}).final.quantize == "lq"
    assert FinalConfig().quantize == "lq"
    for bad in ("round", 1, None):
        with pytest.raises(ValidationError):
            FinalConfig(quantize=bad)


def test_presets_carry_their_quantisation_point():
    expected = {"realesrgan": "lq", "osediff": "output", "seesr": "none", "stablesr": "lq"}
    assert {name: DegradeConfig(preset=name).final.quantize for name in DEGRADE_PRESETS} == expected
    assert {name: p["final"]["quantize"] for name, p in DEGRADE_PRESETS.items()} == expected


def test_step_config_is_a_degradation_config_with_bases_for_stage_two():
    cfg = DegradeConfig(stage2={"noise_range": (1, 5)})
    assert isinstance(cfg, DegradationConfig)
    assert cfg.stage2.noise_range == (1, 5) and cfg.stage2.blur_prob == 0.8 and cfg.kernel2.blur_sigma == (0.2, 1.5)
    # the model-level config carries the same BasicSR stage-2 defaults on its own
    assert DegradationConfig().stage2 == DegradeConfig().stage2 and DegradationConfig().kernel2.blur_sigma == (0.2, 1.5)
    assert DegradationConfig().stage1.blur_prob == 1.0


# ---------------------------------------------------------------------------------------------------------
# Dependency direction: models/ imports no infrastructure (docs/architecture.md §2)


def test_degradations_import_no_tasks_flows_or_infra():
    banned_pkgs = ("srcompress.tasks", "srcompress.flows", "srcompress.infra")
    banned_libs = {"prefect", "mlflow", "boto3", "botocore", "ray"}
    files = sorted(DEGRADATIONS.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "config.py", "jpeg.py", "kernels.py", "ops.py", "pipeline.py"}
    bad = []
    for f in files:
        text = f.read_text()
        assert "shared" + "/" not in text, f  # documentation points into docs/, nothing outside the repository
        for node in ast.walk(ast.parse(text, filename=str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{f.name}: use absolute imports"
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in banned_libs or ".".join(name.split(".")[:2]) in banned_pkgs:
                    bad.append(f"{f.name}: {name}")
    assert not bad, bad
