"""What compression kept: per metric, the teacher's paired gain over bicubic, and each model's retention of it.

    rows = retention(result, reference="teacher", baseline="bicubic")     # → list of dicts (also markdown)

For a metric with per-image values, the paired difference of a model on image i is
``d_i = s·(model_i − bicubic_i)`` with s = −1 when lower is better (so d > 0 is always an improvement). The
teacher's gain is significant when mean(d_teacher) ≥ ``sigmas`` standard errors (SE = sample std / √n).
Only then is retention scored: ``mean(d_model) / mean(d_teacher)``, with a 95% paired bootstrap interval
(images resampled with replacement, both models on the same draw, percentile method). Distribution metrics
(FID) have no per-image values and are not scored.
"""

from __future__ import annotations

import math

import numpy as np

from srcompress.tasks.evaluate.config import VARIANT
from srcompress.tasks.evaluate.runner import EvalResult


def _paired(result: EvalResult, model: str, baseline: str, metric: str) -> dict[str, float]:
    vals = {}
    for r in result.rows:
        if r.get("model") in (model, baseline) and r.get(metric) is not None and math.isfinite(r[metric]):
            vals.setdefault(r["image"], {})[r["model"]] = float(r[metric])
    return {img: v[model] - v[baseline] for img, v in vals.items() if model in v and baseline in v}


def retention(result: EvalResult, reference: str = "teacher", baseline: str = "bicubic", sigmas: float = 3.0,
              boot: int = 2000, seed: int = 0) -> dict:
    """{"metrics": {metric: {gain, se, n, significant}}, "rows": [{model, metric, retention, lo, hi}]}."""
    out: dict = {"reference": reference, "baseline": baseline, "sigmas": sigmas, "bootstrap": boot,
                 "metrics": {}, "rows": []}
    if reference not in result.summary or baseline not in result.summary:
        return out
    models = [m for m in result.summary if m not in (baseline,)]
    rng = np.random.default_rng(seed)
    for metric, lower in sorted(result.lower_better.items()):
        sign = -1.0 if lower else 1.0
        ref = _paired(result, reference, baseline, metric)
        if len(ref) < 2:
            continue
        images = sorted(ref)
        d_ref = sign * np.array([ref[i] for i in images])
        gain, se = float(d_ref.mean()), float(d_ref.std(ddof=1) / math.sqrt(len(d_ref)))
        significant = gain > 0 and gain >= sigmas * se
        out["metrics"][metric] = {"gain": gain, "se": se, "n": len(images), "significant": significant,
                                  "lower_better": lower}
        if not significant:
            continue
        draws = rng.integers(0, len(images), size=(boot, len(images)))
        for model in models:
            pm = _paired(result, model, baseline, metric)
            if any(i not in pm for i in images):
                continue
            d = sign * np.array([pm[i] for i in images])
            ratios = d[draws].mean(1) / np.where(d_ref[draws].mean(1) == 0, np.nan, d_ref[draws].mean(1))
            lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
            out["rows"].append({"model": model, "metric": metric, "retention": float(d.mean() / gain),
                                "lo": float(lo), "hi": float(hi)})
    return out


def efficiency_ratios(result: EvalResult, reference: str = "teacher") -> dict[str, dict[str, float]]:
    """model → {speedup, macs_ratio, params_ratio, memory_ratio} against the reference, same run."""
    ref = result.efficiency.get(reference) or {}
    out = {}
    for model, e in result.efficiency.items():
        row = {}
        for key, name, invert in (("latency_ms", "speedup", True), ("macs", "macs_ratio", False),
                                  ("params", "params_ratio", False), ("peak_mem_mb", "memory_ratio", False)):
            a, b = e.get(key), ref.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0:
                row[name] = b / a if invert else a / b
        out[model] = row
    return out


def retention_markdown(ret: dict, eff: dict[str, dict[str, float]]) -> str:
    """The retention table (models × significant metrics) and the efficiency ratios beside it."""
    ref, base = ret["reference"], ret["baseline"]
    lines = [f"## Retention of the {ref}'s gain over {base}", ""]
    sig = [m for m, v in ret["metrics"].items() if v["significant"]]
    lines.append("Teacher gain per metric (paired over images, mean ± standard error; scored when ≥ "
                 f"{ret['sigmas']:g} SE):")
    lines.append("")
    for m, v in ret["metrics"].items():
        status = "scored" if v["significant"] else "not significant — not scored"
        lines.append(f"- {m}: {v['gain']:+.4g} ± {v['se']:.2g} (n={v['n']}, {'lower' if v['lower_better'] else 'higher'}"
                     f" is better) — {status}")
    lines.append("")
    models = list(dict.fromkeys(r["model"] for r in ret["rows"]))
    if sig and models:
        lines.append("| model | " + " | ".join(sig) + " |")
        lines.append("|---|" + "---|" * len(sig))
        cell = {(r["model"], r["metric"]): r for r in ret["rows"]}
        for model in models:
            vals = []
            for m in sig:
                r = cell.get((model, m))
                vals.append("n/a" if r is None else f"{r['retention']:.0%} [{r['lo']:.0%}, {r['hi']:.0%}]")
            lines.append(f"| {model} | " + " | ".join(vals) + " |")
        lines.append("")
        lines.append(f"Retention = (model − {base}) / ({ref} − {base}) in the metric's better direction; "
                     "[95% paired bootstrap interval].")
        lines.append("")
    if eff:
        lines.append(f"Efficiency relative to the {ref} (same run): speed-up = {ref} latency / model latency.")
        lines.append("")
        lines.append("| model | speed-up | GMACs ratio | params ratio | peak-memory ratio |")
        lines.append("|---|---|---|---|---|")
        for model, row in eff.items():
            f = lambda k: f"{row[k]:.2f}×" if k in row else "n/a"  # noqa: E731
            lines.append(f"| {model} | {f('speedup')} | {f('macs_ratio')} | {f('params_ratio')} | {f('memory_ratio')} |")
        lines.append("")
    return "\n".join(lines)


def ablations(result: EvalResult, against: str = "student", boot: int = 2000, seed: int = 0) -> dict:
    """The main student against each variant row (another phase adapter, another route's mask): per metric with
    per-image values, the paired mean of ``d_i = s·(student_i − variant_i)`` (d > 0: the student is better)
    with a 95% paired bootstrap interval (percentile method); an interval that excludes 0 is a difference the
    images support."""
    variants = [m for m in result.summary if VARIANT.match(m)]
    out: dict = {"against": against, "bootstrap": boot, "rows": []}
    if against not in result.summary or not variants:
        return out
    rng = np.random.default_rng(seed)
    for metric, lower in sorted(result.lower_better.items()):
        sign = -1.0 if lower else 1.0
        for variant in variants:
            pm = _paired(result, against, variant, metric)
            if len(pm) < 2:
                continue
            d = sign * np.array([pm[i] for i in sorted(pm)])
            lo, hi = np.percentile(d[rng.integers(0, len(d), size=(boot, len(d)))].mean(1), [2.5, 97.5])
            out["rows"].append({"variant": variant, "metric": metric, "diff": float(d.mean()), "lo": float(lo),
                                "hi": float(hi), "n": len(d), "supported": bool(lo > 0 or hi < 0)})
    return out


def ablations_markdown(abl: dict) -> str:
    """Variants × metrics: the student's paired advantage over each, [95% interval], * where it excludes 0."""
    if not abl["rows"]:
        return ""
    metrics = list(dict.fromkeys(r["metric"] for r in abl["rows"]))
    cell = {(r["variant"], r["metric"]): r for r in abl["rows"]}
    lines = [f"## The {abl['against']} against its ablations and other routes", "",
             f"Paired over images: mean of ({abl['against']} − variant) in each metric's better direction (positive: "
             f"the {abl['against']} is better) [95% paired bootstrap interval]; * the interval excludes 0.", "",
             "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for variant in dict.fromkeys(r["variant"] for r in abl["rows"]):
        vals = []
        for m in metrics:
            r = cell.get((variant, m))
            vals.append("n/a" if r is None else
                        f"{r['diff']:+.3g} [{r['lo']:+.3g}, {r['hi']:+.3g}]{'*' if r['supported'] else ''}")
        lines.append(f"| {variant} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
