"""Evaluation datasets of every kind, the runner's n/a and unavailable paths, and the report files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcompress.config import load_config
from srcompress.models.iqa import MetricEnv
from srcompress.models.upscalers import Bicubic
from srcompress.tasks.evaluate.config import EfficiencyConfig, EvalDataConfig, EvaluateConfig
from srcompress.tasks.evaluate.datasets import (
    bicubic_down,
    detect_kind,
    load_hr,
    load_lr,
    load_paired,
    load_pairs,
)
from srcompress.tasks.evaluate.report import write_reports
from srcompress.tasks.evaluate.runner import evaluate_models
from tests.tasks.odd_images import photo


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def test_hr_folder_bicubic_and_degrade(tmp_path):
    _save(tmp_path / "a.png", photo(203, 261, seed=1))  # odd size: cropped to a multiple of 4
    _save(tmp_path / "sub" / "b.jpg", photo(96, 128, seed=2))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / "tiny.png", photo(16, 16, seed=3))
    cfg = EvalDataConfig(center_crop=None)
    assert detect_kind(tmp_path) == "hr"
    items, skipped = load_hr(tmp_path, cfg)
    assert [it.name for it in items] == ["a.png", "sub/b.jpg"]
    assert set(skipped) == {"broken.png", "tiny.png"}
    assert "too small" in skipped["tiny.png"] and skipped["broken.png"]
    a = items[0]
    assert a.hr.shape == (200, 260, 3) and a.lr.shape == (50, 65, 3)
    assert np.array_equal(a.lr, bicubic_down(a.hr, 4))
    cropped, _ = load_hr(tmp_path, EvalDataConfig(center_crop=64))
    assert cropped[0].hr.shape == (64, 64, 3)
    # degrade: seeded by the file digest, so a rerun is identical and the two images differ in draws
    deg_cfg = load_config("tiny").degrade
    d1, _ = load_hr(tmp_path, EvalDataConfig(center_crop=64, lq="degrade"), deg_cfg)
    d2, _ = load_hr(tmp_path, EvalDataConfig(center_crop=64, lq="degrade"), deg_cfg)
    assert [x.name for x in d1] == [x.name for x in d2] == ["a.png", "sub/b.jpg"]  # nothing dropped on the way
    assert all(np.array_equal(x.lr, y.lr) for x, y in zip(d1, d2, strict=True))
    assert d1[0].lr.shape == (16, 16, 3) and not np.array_equal(d1[0].lr, cropped[0].lr)
    assert d1[0].note.startswith("degrade seed=")


def test_paired_folder_matches_by_stem_and_checks_sizes(tmp_path):
    hr = photo(128, 160, seed=4)
    _save(tmp_path / "hr" / "x.png", hr)
    _save(tmp_path / "lr" / "x.png", bicubic_down(hr, 4))
    _save(tmp_path / "hr" / "y.png", photo(130, 160, seed=5))  # 2 px too tall: cropped, noted
    _save(tmp_path / "lr" / "y.png", photo(32, 40, seed=5))
    _save(tmp_path / "hr" / "z.png", photo(96, 96, seed=6))  # wrong scale
    _save(tmp_path / "lr" / "z.png", photo(32, 32, seed=6))
    _save(tmp_path / "hr" / "only_hr.png", photo(64, 64, seed=7))
    assert detect_kind(tmp_path) == "paired"
    items, skipped = load_paired(tmp_path, EvalDataConfig())
    assert [it.name for it in items] == ["x", "y"]
    assert items[1].hr.shape == (128, 160, 3) and "cropped" in items[1].note
    assert "not 4x LR" in skipped["z"] and "no matching lr/" in skipped["only_hr"]


def test_lr_only_folder(tmp_path):
    _save(tmp_path / "lr" / "p.png", photo(40, 48, seed=8))
    assert detect_kind(tmp_path) == "lr"
    items, _ = load_lr(tmp_path, EvalDataConfig())
    assert items[0].hr is None and items[0].lr.shape == (40, 48, 3)
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path / "missing")


def test_pairs_shards_need_matching_scale():
    import torch

    lq, hq = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    items, _ = load_pairs(iter([(lq, hq, [{"name": "a", "crop_index": 0}, {"name": "a", "crop_index": 1}])]),
                          EvalDataConfig())
    assert [it.name for it in items] == ["a#0", "a#1"]
    with pytest.raises(ValueError, match="must match degrade.scale"):
        load_pairs(iter([(lq, hq, [])]), EvalDataConfig(scale=2))


def test_runner_reports_na_and_unavailable_and_writes_reports(tmp_path, monkeypatch):
    from srcompress.models.iqa import pyiqa_metrics

    monkeypatch.setattr(pyiqa_metrics, "pyiqa_cache", lambda: tmp_path / "empty")
    src = tmp_path / "src"
    for i in range(3):
        _save(src / f"{i}.png", photo(64, 80, seed=10 + i))
    items, _ = load_hr(src, EvalDataConfig(center_crop=None))
    names = ["psnr", "ssim", "ms_ssim", "lpips", "fid"]
    res = evaluate_models(items, {"bicubic": Bicubic(4)}, names, MetricEnv(), {0, 1}, EfficiencyConfig(reps=2))
    assert "LPIPS_v0.1_alex-df73285e.pth not in" in res.unavailable["lpips"]
    s = res.summary["bicubic"]
    assert s["psnr"].n == 3 and 15 < s["psnr"].mean < 50 and s["psnr"].std > 0
    assert s["ms_ssim"].n == 0 and s["ms_ssim"].mean is None  # 64 px < 176: n/a, with the reason per image
    assert all("176" in r["ms_ssim_note"] for r in res.rows)
    assert s["fid"].n == 3 and s["fid"].mean is not None
    assert res.efficiency["bicubic"]["input_shape"] == (1, 3, 16, 20)
    files = write_reports(res, items, tmp_path / "out", {"color_space": "ycbcr"}, crop=32)
    rows = list(csv.DictReader(files["per_image_csv"].open()))
    assert len(rows) == 3 and rows[0]["ms_ssim"] == "" and float(rows[0]["psnr"]) > 15
    md = files["summary_md"].read_text()
    assert "| bicubic |" in md and "± " in md and "lpips: unavailable" in md and '"color_space": "ycbcr"' in md
    assert sorted(p.name for p in (tmp_path / "out" / "grids").iterdir()) == ["0000_0.png", "0001_1.png"]
    grid = Image.open(tmp_path / "out" / "grids" / "0000_0.png")
    assert grid.height == 32 + 18 and grid.width == 3 * 32 + 4  # LQ | bicubic | HQ, labelled

    # LR-only: full-reference metrics and FID are n/a, never zeros
    lr_items = [type(items[0])(it.name, it.lr, None, it.source_sha256) for it in items]
    res2 = evaluate_models(lr_items, {"bicubic": Bicubic(4)}, ["psnr", "fid"], MetricEnv(), set(),
                           EfficiencyConfig(enabled=False))
    assert res2.summary["bicubic"]["psnr"].mean is None and res2.summary["bicubic"]["psnr"].note == "n/a: no HR"
    assert res2.summary["bicubic"]["fid"].note == "n/a: no HR"


def test_deferred_models_are_built_only_where_scored_or_timed(tmp_path):
    """With a cluster scorer and no timing, the driver never builds a model; otherwise one at a time, and the
    numbers equal those of a model built up front."""
    from srcompress.tasks.evaluate.runner import Deferred, build_metrics, score_items

    src = tmp_path / "src"
    for i in range(2):
        _save(src / f"{i}.png", photo(48, 48, seed=20 + i))
    items, _ = load_hr(src, EvalDataConfig(center_crop=None))
    built = []

    def build():
        built.append(1)
        return Bicubic(4)

    class Scorer:  # what ClusterScorer gives: a model's slices, and the model as its tasks described it
        def __call__(self, name):
            metrics, _ = build_metrics(["psnr"], MetricEnv())
            return [score_items(name, Bicubic(4), items, [0, 1], metrics, set())]

        def describe(self, name):
            return {"kind": "bicubic", "described_by": "tasks"}

    off = EfficiencyConfig(enabled=False)
    res = evaluate_models(items, {"bicubic": Deferred(build)}, ["psnr"], MetricEnv(), set(), off, Scorer())
    assert built == [] and res.models["bicubic"]["described_by"] == "tasks"
    ref = evaluate_models(items, {"bicubic": Bicubic(4)}, ["psnr"], MetricEnv(), set(), off)
    assert res.summary["bicubic"]["psnr"].mean == ref.summary["bicubic"]["psnr"].mean
    local = evaluate_models(items, {"bicubic": Deferred(build)}, ["psnr"], MetricEnv(), set(), off)
    assert built == [1] and local.summary["bicubic"]["psnr"].mean == ref.summary["bicubic"]["psnr"].mean
    timed = evaluate_models(items, {"bicubic": Deferred(build)}, ["psnr"], MetricEnv(), set(),
                            EfficiencyConfig(reps=1, warmup=0), Scorer())
    assert built == [1, 1] and "latency_ms" in timed.efficiency["bicubic"]
    plain = evaluate_models(items, {"bicubic": Deferred(build)}, ["psnr"], MetricEnv(), set(), off,
                            lambda name: Scorer()(name))  # a scorer that cannot describe: the model is built
    assert built == [1, 1, 1] and plain.models["bicubic"]["kind"] == "bicubic"


def test_config_validates_models_and_metrics():
    from srcompress.infra.config import ConfigError

    cfg = EvaluateConfig(models=["teacher"])
    assert cfg.models == ["bicubic", "teacher"]
    with pytest.raises(ValueError, match="unknown models"):
        EvaluateConfig(models=["studnet"])
    with pytest.raises(ConfigError, match="evaluate.metrics"):
        load_config("tiny", ["evaluate.metrics=[psnr, lpipz]"])
