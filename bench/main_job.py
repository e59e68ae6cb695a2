"""The README's main job (the embedded default, as shipped), run once and checked: its numbers are a benchmark's.

    .venv/bin/python bench/main_job.py [--workdir NEW_FOLDER]

Runs ``configs/tiny.yaml`` end to end (in-process, as ``srcompress run`` does), then checks what the README
promises of it: the bootstrapped teacher clearly beats bicubic on the held-out photos (PSNR-Y gain ≥ 0.5 dB and
ST-LPIPS gain ≥ 10% of bicubic's, both ≥ 3 SE), the final student keeps ≥ 80% of every significant gain at half
the depth while the pruned-undistilled model keeps clearly less, the student is measurably faster than the
teacher in the same run, and it is registered. Exits 1 with the failed checks listed; ``.ci/run`` runs it after
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
    check(m["eval_pairs"] == 24 and m["psnr_y_teacher"] > m["psnr_y_bicubic"] + 0.1, f"teacher validation: {m}")
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
    check(macs_ratio > 1 / 0.6, f"MACs ratio {macs_ratio:.2f}")  # half the blocks of a backbone-dominated model
    speedup = ret["efficiency"]["student"]["speedup"]
    check(speedup > 1.3, f"speedup {speedup:.2f} (measured in the same run)")
    table = Path(out["table"]).read_text()
    check("Retention of the teacher's gain" in table and "profiler" in table.lower(), "the printed table")
    check(out["model_version"] == "models:/srcompress-student/1", f"registered {out['model_version']}")
    check(set(out["outcomes"].values()) == {"ran"}, f"outcomes {out['outcomes']}")
    figures = {"gain_psnr": round(gains["psnr"]["gain"], 3),
               "retention_min": round(worst, 3),
               "speedup": round(speedup, 2), "macs_ratio": round(macs_ratio, 2)}
    return failed, figures


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
    for line in failed:
        print("FAILED:", line)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in {**figures, "seconds": round(seconds)}.items())
          + f" checks_failed={len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
