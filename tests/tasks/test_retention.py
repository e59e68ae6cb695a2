"""Retention of the teacher's gain: significance gate, direction, paired bootstrap interval, efficiency ratios."""

from __future__ import annotations

import numpy as np

from srcompress.tasks.evaluate.retention import efficiency_ratios, retention, retention_markdown
from srcompress.tasks.evaluate.runner import EvalResult, MetricSummary


def _result(n: int = 12, seed: int = 0) -> EvalResult:
    rng = np.random.default_rng(seed)
    res = EvalResult(lower_better={"psnr": False, "st_lpips": True, "ssim": False})
    base = {"psnr": rng.normal(25, 2, n), "st_lpips": rng.uniform(0.3, 0.5, n), "ssim": rng.uniform(0.6, 0.8, n)}
    gains = {"teacher": (1.0, -0.10, 0.0), "student": (0.8, -0.05, 0.0), "pruned": (0.2, 0.02, 0.0)}
    for model in ("bicubic", "teacher", "student", "pruned"):
        g = gains.get(model, (0.0, 0.0, 0.0))
        for i in range(n):
            noise = rng.normal(0, 0.05, 3)
            res.rows.append({"image": f"im{i}", "model": model, "psnr": base["psnr"][i] + g[0] + noise[0],
                             "st_lpips": base["st_lpips"][i] + g[1] + noise[1] * 0.1,
                             "ssim": base["ssim"][i] + g[2] + noise[2]})
        res.summary[model] = {"psnr": MetricSummary(0, 0, n)}
    res.efficiency = {"teacher": {"latency_ms": 100.0, "macs": 4e9, "params": 1e6, "peak_mem_mb": 50.0},
                      "student": {"latency_ms": 50.0, "macs": 2e9, "params": 5e5, "peak_mem_mb": 30.0}}
    return res


def test_retention_scores_only_significant_gains_in_the_better_direction():
    ret = retention(_result())
    assert ret["metrics"]["psnr"]["significant"] and ret["metrics"]["st_lpips"]["significant"]
    assert not ret["metrics"]["ssim"]["significant"]  # no real gain: listed, not scored
    cell = {(r["model"], r["metric"]): r for r in ret["rows"]}
    assert ("student", "ssim") not in cell
    assert abs(cell[("teacher", "psnr")]["retention"] - 1.0) < 1e-9  # the reference retains 100% by definition
    s = cell[("student", "psnr")]
    assert 0.7 < s["retention"] < 0.9 and s["lo"] < s["retention"] < s["hi"]
    assert 0.3 < cell[("student", "st_lpips")]["retention"] < 0.7  # lower-is-better handled
    assert cell[("pruned", "st_lpips")]["retention"] < 0  # worse than bicubic → negative retention
    md = retention_markdown(ret, efficiency_ratios(_result()))
    assert "ssim: " in md and "not significant" in md and "| student |" in md


def test_efficiency_ratios_against_the_teacher():
    eff = efficiency_ratios(_result())
    assert eff["student"] == {"speedup": 2.0, "macs_ratio": 0.5, "params_ratio": 0.5, "memory_ratio": 0.6}
    assert eff["teacher"]["speedup"] == 1.0


def test_bootstrap_interval_is_seeded_and_widens_with_noise():
    a, b = retention(_result(seed=1)), retention(_result(seed=1))
    assert a["rows"] == b["rows"]
    tight = {(r["model"], r["metric"]): r["hi"] - r["lo"] for r in retention(_result(n=40))["rows"]}
    wide = {(r["model"], r["metric"]): r["hi"] - r["lo"] for r in retention(_result(n=6))["rows"]}
    assert wide[("student", "psnr")] > tight[("student", "psnr")]
