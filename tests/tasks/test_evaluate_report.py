"""Evaluation report: every n/a cell has a footnote with its reason and count; grids sample every source."""

from __future__ import annotations

import re

import numpy as np

from srcompress.tasks.evaluate.datasets import EvalItem
from srcompress.tasks.evaluate.report import grid_indices, item_source, summary_markdown, write_reports
from srcompress.tasks.evaluate.runner import EvalResult, MetricSummary

SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹"
TOO_SMALL = "ms_ssim needs ≥176 px, image is 64x64"


def _eff(method: str = "torch.profiler live-tensor peak (CPU)", peak: float | None = 12.5) -> dict:
    return {"latency_ms": 3.2, "latency_p90_ms": 3.5, "macs": 2_000_000, "params": 1000, "peak_mem_mb": peak,
            "memory_method": method, "threads": 2, "warmup": 2, "reps": 5, "input_shape": (1, 3, 16, 16),
            "device": "cpu"}


def _result(n: int = 3) -> EvalResult:
    res = EvalResult()
    res.unavailable = {"lpips": "unavailable: LPIPS_v0.1_alex-df73285e.pth not in /cache/pyiqa"}
    res.lower_better = {"psnr": False, "ms_ssim": False, "niqe": True}
    for model in ("bicubic", "teacher"):
        for i in range(n):
            row = {"image": f"img{i}.png", "model": model, "lr_size": "16x16", "seconds": 0.01,
                   "psnr": 20.0 + i, "ms_ssim": None, "ms_ssim_note": TOO_SMALL, "niqe": 5.0 + i}
            if model == "teacher" and i == 0:  # one image without NIQE, for the teacher only: a partial mean
                row["niqe"], row["niqe_note"] = None, "niqe needs at least two 96x96 blocks, image is 64x64"
            res.rows.append(row)
        niqe = [r["niqe"] for r in res.rows if r["model"] == model and r["niqe"] is not None]
        res.summary[model] = {
            "psnr": MetricSummary(21.0, 0.8, n),
            "ms_ssim": MetricSummary(None, None, 0, "no image had a value"),
            "niqe": MetricSummary(float(np.mean(niqe)), float(np.std(niqe)), len(niqe)),
            "seconds_per_image": MetricSummary(0.01, 0.0, n),
        }
        res.efficiency[model] = _eff()
    return res


def _table(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells
    return head, rows


def _footnote(md: str, marker: str) -> str:
    hits = [ln for ln in md.splitlines() if ln.startswith(f"- {marker} ")]
    assert len(hits) == 1, (marker, md)
    return hits[0]


def test_every_na_cell_has_a_marker_and_a_footnote_with_reason_and_count():
    md = summary_markdown(_result(), 3, {"color_space": "ycbcr"})
    head, rows = _table(md)
    assert [h.rstrip(SUP) for h in head[:5]] == ["model", "psnr ↑", "ms_ssim ↑", "niqe ↓", "lpips"]
    na_cells = [(model, head[j], c) for model, cells in rows.items() for j, c in enumerate(cells) if "n/a" in c]
    assert len(na_cells) == 4  # ms_ssim and lpips for both models
    for model, col, cell in na_cells:
        m = re.fullmatch(rf"n/a([{SUP}]+)", cell)
        assert m, (model, col, cell)
        note = _footnote(md, m.group(1))
        metric = col.split()[0]
        assert note.startswith(f"- {m.group(1)} {metric}: ")
    ms = _footnote(md, rows["bicubic"][2].removeprefix("n/a"))
    assert "3/3 images of every model" in ms and TOO_SMALL in ms
    lp = _footnote(md, rows["teacher"][4].removeprefix("n/a"))
    assert "3/3 images of every model" in lp and "unavailable: LPIPS_v0.1_alex-df73285e.pth not in /cache/pyiqa" in lp
    assert rows["bicubic"][2] == rows["teacher"][2]  # one footnote per metric, shared by the models
    # a mean over fewer than all images is marked too, with who lacked how many and why
    assert rows["bicubic"][3] == "6.0000 ± 0.8165" and rows["teacher"][3][-1] in SUP
    nq = _footnote(md, re.search(rf"[{SUP}]+$", rows["teacher"][3]).group(0))
    assert "niqe: no value for 1/3 images of teacher" in nq and "at least two 96x96 blocks" in nq
    assert not any(c[-1] in SUP for c in rows["bicubic"][1:2] + rows["teacher"][1:2])  # complete psnr: no marker
    assert "## Unavailable metrics" in md and "- lpips: unavailable: LPIPS" in md


def test_reasons_are_counted_per_reason_and_no_hr_is_named():
    res = _result(4)
    for r in res.rows[:2] + res.rows[4:6]:  # images 0 and 1 of both models are smaller still
        r["ms_ssim_note"] = "ms_ssim needs ≥176 px, image is 40x40"
    md = summary_markdown(res, 4, {})
    _, rows = _table(md)
    ms = _footnote(md, rows["bicubic"][2].removeprefix("n/a"))
    assert "4/4 images of every model" in ms
    assert f"{TOO_SMALL} (2 images)" in ms and "image is 40x40 (2 images)" in ms

    lr_only = EvalResult(lower_better={"psnr": False, "fid": True})
    lr_only.rows = [{"image": "a", "model": "bicubic", "psnr": None, "psnr_note": "no HR"},
                    {"image": "b", "model": "bicubic", "psnr": None}]
    lr_only.summary["bicubic"] = {"psnr": MetricSummary(None, None, 0, "n/a: no HR"),
                                  "fid": MetricSummary(None, None, 0, "n/a: no HR")}
    md = summary_markdown(lr_only, 2, {})
    _, rows = _table(md)
    assert rows["bicubic"][1].startswith("n/a") and rows["bicubic"][2].startswith("n/a")
    assert _footnote(md, rows["bicubic"][1][3:]).endswith("psnr: no value for 2/2 images of bicubic — no HR")
    assert _footnote(md, rows["bicubic"][2][3:]).endswith("fid: no value for 2/2 images of bicubic — no HR")
    eff = _footnote(md, rows["bicubic"][3][3:])  # efficiency disabled: four n/a cells, one reason
    assert "not measured" in eff and rows["bicubic"][3:] == [rows["bicubic"][3]] * 4


def test_efficiency_footnote_names_memory_method_and_latency_protocol():
    res = _result()
    md = summary_markdown(res, 3, {})
    head, rows = _table(md)
    peak_head = next(h for h in head if h.startswith("peak MB"))
    note = _footnote(md, peak_head.removeprefix("peak MB ↓"))
    assert "peak MB: torch.profiler live-tensor peak (CPU)" in note
    assert "median (min–max) of 5 timed calls after 2 warm-up calls" in note and "threads 2" in note and "input 1×3×16×16" in note
    assert "efficiency (bicubic, teacher)" in note
    assert next(h for h in head if h.startswith("latency ms")) == "latency ms ↓" + peak_head.removeprefix("peak MB ↓")

    res.efficiency["teacher"] = _eff("unavailable: torch.profiler failed (busy)", peak=None)
    md = summary_markdown(res, 3, {})
    _, rows = _table(md)
    assert rows["bicubic"][-1] == "12.5"
    cell = rows["teacher"][-1]
    assert cell.startswith("n/a") and "unavailable: torch.profiler failed (busy)" in _footnote(md, cell[3:])
    assert "bicubic: peak MB: torch.profiler live-tensor peak (CPU)" in md and "teacher: peak MB: unavailable" in md


def test_latency_cells_show_the_spread_and_flag_outliers():
    res = _result()
    res.efficiency["bicubic"] |= {"latency_min_ms": 3.0, "latency_max_ms": 3.6, "latency_outliers": 0,
                                  "interleaved": True}
    res.efficiency["teacher"] |= {"latency_min_ms": 3.1, "latency_max_ms": 40.0, "latency_outliers": 2,
                                  "interleaved": True}
    md = summary_markdown(res, 3, {})
    head, rows = _table(md)
    col = next(i for i, h in enumerate(head) if h.startswith("latency ms"))
    assert rows["bicubic"][col] == "3.20 (3.00–3.60)"
    cell = rows["teacher"][col]
    assert cell.startswith("3.20 (3.10–40.00)")
    assert "teacher): 2 of 5 timed calls above median + 3 robust σ" in _footnote(md, cell.removeprefix("3.20 (3.10–40.00)"))
    assert "in interleaved rounds (every model once per round, order rotated)" in md


def test_grid_indices_cover_every_source_round_robin():
    names = [f"{src}/I0{k}.bmp#{c}" for k, src in enumerate(["kodak", "urban", "bsd"]) for c in range(8)]
    picked = grid_indices(names, 6)
    assert len(picked) == 6 and len(set(picked)) == 6
    assert {item_source(names[i]) for i in picked} == {"kodak/I00.bmp", "urban/I01.bmp", "bsd/I02.bmp"}
    # sorted sources (bsd, kodak, urban), first crop of each first, then the second crops
    assert picked == [16, 0, 8, 17, 1, 9]
    assert grid_indices(names, 6) == picked  # deterministic
    assert grid_indices(names, 2) == [16, 0] and grid_indices(names, 0) == []
    assert sorted(grid_indices(names, 100)) == list(range(24))
    assert grid_indices(["b.png", "a.png", "c.png"], 2) == [1, 0]  # no suffix: every item is its own source
    assert item_source("set/x#y.png#12") == "set/x#y.png"


def test_write_reports_draws_grids_for_exactly_the_kept_outputs(tmp_path):
    items = [EvalItem(f"p{k}#{c}", np.full((4, 4, 3), 10 * k, np.uint8), np.zeros((16, 16, 3), np.uint8), "")
             for k in range(3) for c in range(4)]
    keep = set(grid_indices([it.name for it in items], 3))
    assert keep == {0, 4, 8}
    res = _result()
    res.outputs = {m: {i: np.zeros((16, 16, 3), np.uint8) for i in sorted(keep)} for m in ("bicubic", "teacher")}
    files = write_reports(res, items, tmp_path, {}, crop=16)
    grids = sorted(p.name for p in (tmp_path / "grids").iterdir())
    assert grids == ["0000_p0_0.png", "0004_p1_0.png", "0008_p2_0.png"]
    assert {k for k in files if k.startswith("grid_")} == {"grid_0", "grid_4", "grid_8"}
    md = files["summary_md"].read_text()
    assert "torch.profiler live-tensor peak (CPU)" in md and "ms_ssim: no value for 3/3 images" in md


def test_the_compressed_vae_is_reported_beside_the_teacher_vae(tmp_path):
    from srcompress.tasks.evaluate.report import vae_markdown

    rep = {"eval": {"count": 3, "images": "held-out HQ crops", "size": [64, 64]}, "teacher_widths": [128, 256],
           "widths": [64, 64], "params_teacher": 2_500_000, "params": 300_000,
           "macs_per_image": {"teacher_vae": 4.2e9, "compressed_vae": 0.31e9},
           "reconstruction": {"teacher_vae": {"psnr": 31.234, "ssim": 0.91234, "st_lpips": 0.0512},
                              "compressed_vae": {"psnr": 29.876, "ssim": 0.88123, "st_lpips": 0.0734}}}
    md = vae_markdown(rep)
    assert "| teacher_vae | [128, 256] | 2.500M | 4.200G | 31.23 | 0.9123 | 0.0512 |" in md
    assert "| compressed_vae | [64, 64] | 0.300M | 0.310G | 29.88 | 0.8812 | 0.0734 |" in md
    items = [EvalItem(f"p{k}", np.zeros((4, 4, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), "") for k in range(3)]
    files = write_reports(_result(), items, tmp_path, {}, 8, vae_report=rep)
    assert md.strip() in files["summary_md"].read_text()
