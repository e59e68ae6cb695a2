"""The promotion gate: may a new model version take the champion alias?

A version is promoted when there is no champion yet, or when — evaluated on the same evaluation set (same
``lineage.eval_data.digest``) — none of the gate's metrics is worse than the champion's by more than its
tolerance, and its worst retention is not lower by more than ``retention_tolerance``. Everything is read
from the two versions' tags, so the decision can be re-derived from MLflow alone.
"""

from __future__ import annotations

from srcompress.tasks.register.config import GateConfig

HIGHER_IS_BETTER = {"psnr", "ssim", "ms_ssim", "psnr_pyiqa", "ssim_pyiqa", "musiq", "maniqa", "clipiqa"}


def _lower_better(metric: str, tags: dict) -> bool:
    flag = tags.get(f"lower_better.{metric}")
    return flag == "True" if flag is not None else metric not in HIGHER_IS_BETTER


def _worst_retention(tags: dict) -> float | None:
    vals = [float(v) for k, v in tags.items() if k.startswith("retention.")]
    return min(vals) if vals else None


def gate_decision(gate: GateConfig, new: dict, champ: dict | None, champ_version: str | None, version: str) -> dict:
    out = {"version": version, "champion": champ_version, "checks": []}
    if champ is None:
        return out | {"promote": True, "reason": "no champion yet"}
    if champ_version == version:
        return out | {"promote": True, "reason": "already the champion"}
    if "lineage.evaluate.digest" not in new:
        return out | {"promote": False, "reason": "this version has no evaluation"}
    if new.get("lineage.eval_data.digest") != champ.get("lineage.eval_data.digest"):
        return out | {"promote": False, "reason": "the champion was evaluated on another evaluation set; evaluate "
                                                  "both on one set first"}
    ok = True
    for metric in gate.metrics:
        a, b = new.get(f"metrics.student.{metric}"), champ.get(f"metrics.student.{metric}")
        if a is None or b is None:
            out["checks"].append({"metric": metric, "skipped": "missing on one version"})
            continue
        a, b = float(a), float(b)
        worse = (a - b) if _lower_better(metric, new) else (b - a)
        tol = gate.tolerance.get(metric, 0.0)
        out["checks"].append({"metric": metric, "new": a, "champion": b, "worse_by": worse, "tolerance": tol,
                              "pass": worse <= tol})
        ok &= worse <= tol
    rn, rc = _worst_retention(new), _worst_retention(champ)
    if rn is not None and rc is not None:
        out["checks"].append({"metric": "worst retention", "new": rn, "champion": rc, "worse_by": rc - rn,
                              "tolerance": gate.retention_tolerance, "pass": rc - rn <= gate.retention_tolerance})
        ok &= rc - rn <= gate.retention_tolerance
    failed = [c["metric"] for c in out["checks"] if c.get("pass") is False]
    return out | {"promote": ok, "reason": "not worse than the champion within tolerances" if ok else
                  f"worse than champion {champ_version} on {', '.join(failed)}"}
