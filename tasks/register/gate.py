"""The promotion gate: may a new model version take the champion alias?

A version is promoted when there is no champion yet, or when — evaluated on the same evaluation set (same
``lineage.eval_data.digest``) — none of the gate's metrics is worse than the champion's by more than its
tolerance, and its worst retention is not lower by more than ``retention_tolerance``. Everything is read
from the two versions' tags, so the decision can be re-derived from MLflow alone.

A comparison the gate cannot make is a refusal, never a pass: a version evaluated on another (or an
unrecorded) evaluation set, a gated metric missing on either version, or retention recorded on only one of
them keeps the candidate a candidate, with the reason naming what is missing.
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
    data_new, data_champ = new.get("lineage.eval_data.digest"), champ.get("lineage.eval_data.digest")
    if not data_new or not data_champ:
        return out | {"promote": False, "reason": "the evaluation set of this version or of the champion is not "
                                                  "recorded (lineage.eval_data.digest); evaluate both on one set first"}
    if data_new != data_champ:
        return out | {"promote": False, "reason": "the champion was evaluated on another evaluation set; evaluate "
                                                  "both on one set first"}
    missing = []  # an unmeasured metric is not "not worse": the gate refuses rather than skip it
    for metric in gate.metrics:
        a, b = new.get(f"metrics.student.{metric}"), champ.get(f"metrics.student.{metric}")
        if a is None or b is None:
            where = "both versions" if a is None and b is None else "this version" if a is None else "the champion"
            out["checks"].append({"metric": metric, "pass": False, "missing_on": where})
            missing.append(f"{metric} (missing on {where})")
            continue
        a, b = float(a), float(b)
        worse = (a - b) if _lower_better(metric, new) else (b - a)
        tol = gate.tolerance.get(metric, 0.0)
        out["checks"].append({"metric": metric, "new": a, "champion": b, "worse_by": worse, "tolerance": tol,
                              "pass": worse <= tol})  # NaN compares False: a NaN metric fails
    rn, rc = _worst_retention(new), _worst_retention(champ)
    if rn is not None and rc is not None:
        out["checks"].append({"metric": "worst retention", "new": rn, "champion": rc, "worse_by": rc - rn,
                              "tolerance": gate.retention_tolerance, "pass": rc - rn <= gate.retention_tolerance})
    elif rn is not None or rc is not None:  # neither: retention was not scored (no teacher/bicubic rows)
        where = "this version" if rn is None else "the champion"
        out["checks"].append({"metric": "worst retention", "pass": False, "missing_on": where})
        missing.append(f"worst retention (missing on {where})")
    if missing:
        return out | {"promote": False, "reason": f"cannot compare with champion {champ_version}: "
                                                  f"{', '.join(missing)}; evaluate both with the gated metrics"}
    failed = [c["metric"] for c in out["checks"] if c["pass"] is False]
    return out | {"promote": not failed, "reason": f"worse than champion {champ_version} on {', '.join(failed)}"
                  if failed else "not worse than the champion within tolerances"}
