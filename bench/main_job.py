"""The README's main job (the embedded default, as shipped), run once and checked: its numbers are a benchmark's.

    .venv/bin/python bench/main_job.py [--workdir NEW_FOLDER]

Runs ``configs/tiny.yaml`` end to end (in-process, as ``srcompress run`` does), then checks what the README
promises of it: the bootstrapped teacher clearly beats bicubic on the held-out photos (PSNR-Y gain ≥ 0.5 dB and
ST-LPIPS gain ≥ 10% of bicubic's, both ≥ 3 SE), the final student keeps ≥ 80% of every significant gain at half
the depth while the pruned-undistilled model keeps clearly less, the student is ≥ 3x faster than the teacher in
the same run (issue 18), the compressed VAE's reconstruction is reported beside the teacher VAE's, and the
student is registered. It also reports, without checking it yet, how much a patch grid stands out in the
teacher's and the student's outputs on the held-out photos (``grid_ratio`` at one token's pixel period and at
4 px, beside the HQ photos' own; measured: a faint 8-px grid, issue 18 keeps this open). Exits 1 with the failed checks listed; ``.ci/run`` runs it after
the test suite (the suite itself checks behaviour on seconds-scale configs, not these quality figures).
Ends with ``RESULT gain_psnr=… retention_min=… speedup=… macs_ratio=… seconds=…``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _read(uri: str) -> dict:
    return json.loads(Path(uri.removeprefix("file://")).read_text())


def checks(out: dict) -> tuple[list[str], dict]:
    """The failed checks (empty when all hold) and the headline figures."""
    failed: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failed.append(what)

    m = out["steps"]["bootstrap_teacher"]["extra"]["metrics"]
    check(m["eval_pairs"] >= 24 and m["psnr_y_teacher"] > m["psnr_y_bicubic"] + 0.1, f"teacher validation: {m}")
    ev = out["steps"]["evaluate"]
    # the held-out photos, centre-cropped to 512 and scored as 192-px tiles: 12 paired items
    check(ev["counts"]["images"] == 12 and ev["counts"]["models"] == 6, f"evaluation counts: {ev['counts']}")
    e = ev["extra"]["metrics"]
    for model in ("bicubic", "teacher", "student"):  # every offline metric has a value in the main job
        missing = [k for k in ("psnr", "ssim", "ms_ssim", "niqe", "piqe", "st_lpips", "fid") if f"{model}.{k}" not in e]
        check(not missing, f"{model} lacks {missing}")
    report = _read(ev["uri"])
    ret = _read(report["files"]["retention.json"]["uri"])
    gains = ret["metrics"]
    check(gains["psnr"]["significant"] and gains["psnr"]["gain"] >= 0.5, f"teacher PSNR gain: {gains['psnr']}")
    check(gains["st_lpips"]["significant"] and gains["st_lpips"]["gain"] >= 0.1 * e["bicubic.st_lpips"],
          f"teacher ST-LPIPS gain: {gains['st_lpips']}")
    check(gains["piqe"]["significant"], f"teacher PIQE gain: {gains['piqe']}")
    cell = {(r["model"], r["metric"]): r["retention"] for r in ret["rows"]}
    scored = [k for k, v in gains.items() if v["significant"]]
    student = {k: cell[("student", k)] for k in scored}
    check(all(v >= 0.8 for v in student.values()), f"student retention < 0.8: {student}")
    # NaN when no gain is significant (already a failed check above): reported, not a crash before the report
    worst = min(student.values(), default=float("nan"))
    pruned = min((cell[("pruned", k)] for k in scored), default=float("nan"))
    check(pruned < worst - 0.1, f"pruned retention {pruned:.3f} not clearly below the student's {worst:.3f}")
    eff = _read(report["files"]["efficiency.json"]["uri"])
    check(set(eff) == {"bicubic", "teacher", "pruned", "searched", "student_stage1", "student"}, f"rows {set(eff)}")
    macs_ratio = eff["teacher"]["macs"] / eff["student"]["macs"]
    check(macs_ratio > 3, f"MACs ratio {macs_ratio:.2f}")  # half the blocks, no prompt tokens, a 2x narrower VAE
    speedup = ret["efficiency"]["student"]["speedup"]
    check(speedup >= 3.0, f"speedup {speedup:.2f} (measured in the same run; issue 18: >= 3x)")
    vae = out["steps"]["compress_vae"]["extra"]["report"]["reconstruction"]
    check(set(vae) == {"teacher_vae", "compressed_vae"} and "VAE reconstruction" in Path(out["table"]).read_text(),
          f"VAE reconstruction figures: {vae}")
    table = Path(out["table"]).read_text()
    check("Retention of the teacher's gain" in table and "profiler" in table.lower(), "the printed table")
    check(out["model_version"] == "models:/srcompress-student/1", f"registered {out['model_version']}")
    check(set(out["outcomes"].values()) == {"ran"}, f"outcomes {out['outcomes']}")
    figures = {"gain_psnr": round(gains["psnr"]["gain"], 3),
               "retention_min": round(worst, 3),
               "speedup": round(speedup, 2), "macs_ratio": round(macs_ratio, 2),
               "vae_psnr": round(vae["compressed_vae"]["psnr"], 2), "teacher_vae_psnr": round(vae["teacher_vae"]["psnr"], 2)}
    return failed, figures


def grid_figures(out: dict, work: Path) -> dict[str, float]:
    """The patch-grid ratio (``models/metrics.grid_ratio``) of the teacher's and the final student's outputs on
    the held-out photos (the evaluation's LR tiles), at the pixel period of one transformer token (patch size ×
    VAE factor) and at the 4-px period of the old patch-4-on-pixels teacher, beside the HQ photos' own."""
    import numpy as np
    import torch
    from PIL import Image

    from srcompress.infra.manifest import Manifest
    from srcompress.infra.store import StoreConfig, open_store
    from srcompress.models.metrics import grid_ratio
    from srcompress.models.student.student import load_student
    from srcompress.models.teachers.loader import load_teacher
    from srcompress.models.upscalers import DiffusionSR
    from srcompress.tasks.common.teachers import fetch_teacher_folder

    store = open_store(StoreConfig(uri=out["store"]), work)

    def folder(step: str) -> Path:
        return fetch_teacher_folder(store, Manifest.model_validate(out["steps"][step]), work / "bench" / step)

    def images(kind: str) -> torch.Tensor:
        files = sorted((work / "store" / "eval_data").glob(f"*/{kind}/*.png"))
        return torch.cat([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
                          .permute(2, 0, 1)[None] for f in files])

    lr, hq = images("lr"), images("hr")
    teacher, student = load_teacher(folder("bootstrap_teacher")), load_student(folder("distill_pixel"))
    token = teacher.backbone.config.patch_size * teacher.latent_factor
    figures = {}
    with torch.inference_mode():
        for name, model in (("teacher", teacher), ("student", student)):
            sr = torch.cat([DiffusionSR(model.eval(), 4, color_fix="wavelet")(x[None]) for x in lr])
            for period in sorted({token, 4}):
                figures[f"grid{period}_{name}"] = round(grid_ratio(sr, period), 3)
                figures[f"grid{period}_hq"] = round(grid_ratio(hq, period), 3)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="a new or empty work dir (default: a fresh temporary one)")
    args = ap.parse_args()
    # the figures must be those of a fresh run, not of cache hits — and a folder the user named is never emptied
    work = Path(args.workdir or tempfile.mkdtemp(prefix="srcompress-main-job-"))
    if work.exists() and any(work.iterdir()):
        ap.error(f"--workdir {work} is not empty: the benchmark needs a fresh run (name a new folder)")

    from srcompress.infra.orchestration import configure_prefect

    configure_prefect(work)  # before prefect is imported, as the CLI does
    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline

    t0 = time.perf_counter()
    out = run_pipeline(load_config("tiny"), work)
    seconds = time.perf_counter() - t0
    failed, figures = checks(out)
    grid = grid_figures(out, work)
    for key, value in grid.items():  # reported, not yet a check: issue 18's "no visible patch grid" is open
        hq = grid[key.rsplit("_", 1)[0] + "_hq"]
        if not key.endswith("_hq") and value > hq + 0.05:
            print(f"NOTE: {key} = {value} against {hq} for the HQ photos: a faint patch grid")
    figures |= grid
    for line in failed:
        print("FAILED:", line)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in {**figures, "seconds": round(seconds)}.items())
          + f" checks_failed={len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
