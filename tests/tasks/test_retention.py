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


def test_ablations_pair_the_student_with_each_variant_in_the_better_direction():
    """student_phase_none is the student made worse on PSNR by 0.5 dB and on ST-LPIPS by +0.05, student_route_x
    differs by noise only: the first difference is supported (interval excludes 0) with the right sign in both
    directions of better, the second is not; rows that are not variants are not compared."""
    from srcompress.tasks.evaluate.retention import ablations, ablations_markdown

    res = _result()
    rng = np.random.default_rng(1)
    student = [r for r in res.rows if r["model"] == "student"]
    for name, shift in (("student_phase_none", (-0.5, 0.05)), ("student_route_x", (0.0, 0.0))):
        for r in student:
            res.rows.append(r | {"model": name, "psnr": r["psnr"] + shift[0] + rng.normal(0, 0.05),
                                 "st_lpips": r["st_lpips"] + shift[1] + rng.normal(0, 0.005)})
        res.summary[name] = res.summary["student"]
    abl = ablations(res)
    cell = {(r["variant"], r["metric"]): r for r in abl["rows"]}
    assert {v for v, _ in cell} == {"student_phase_none", "student_route_x"}
    none_psnr, none_lp = cell[("student_phase_none", "psnr")], cell[("student_phase_none", "st_lpips")]
    assert 0.45 < none_psnr["diff"] < 0.55 and none_psnr["lo"] > 0 and none_psnr["supported"]
    assert 0.045 < none_lp["diff"] < 0.055 and none_lp["supported"]  # lower is better: the student wins, positive
    route = cell[("student_route_x", "psnr")]
    assert route["lo"] < 0 < route["hi"] and not route["supported"] and abs(route["diff"]) < 0.05
    d = np.array([a["psnr"] - b["psnr"] for a, b in zip(student, [r for r in res.rows
                                                                   if r["model"] == "student_phase_none"])])
    assert abs(none_psnr["diff"] - d.mean()) < 1e-12
    assert none_psnr["lo"] < d.mean() < none_psnr["hi"] and none_psnr["hi"] - none_psnr["lo"] < 6 * d.std(ddof=1) / 12 ** 0.5
    assert "| student_phase_none |" in ablations_markdown(abl) and "*" in ablations_markdown(abl)
    assert ablations(_result())["rows"] == []  # no variant rows: no section
