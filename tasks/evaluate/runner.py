"""Run every model on every item and score it with every available metric.

    result = evaluate_models(items, upscalers, metric_names, env, grid_ids, eff_cfg)

Conventions: SR outputs are quantised to 8 bit before scoring (as the PNGs the official scripts score);
image metrics are computed per image (sizes differ); FID over the whole set; full-reference metrics and FID
are "n/a: no HR" on LR-only sets; an image below a metric's minimum size is "n/a" with the reason, and the
mean is over the images that have a value (their count is reported). Every image without a value has a
``<metric>_note`` in its row (the reason: ``ImageTooSmall``'s message, "no HR", "non-finite score"), which the
report turns into the table's footnotes.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from srcompress.models.efficiency import measure_many
from srcompress.models.iqa import ImageTooSmall, MetricEnv, MetricUnavailable, build_metric
from srcompress.tasks.evaluate.config import EfficiencyConfig
from srcompress.tasks.evaluate.datasets import EvalItem, to_tensor, to_uint8

log = logging.getLogger(__name__)


@dataclass
class MetricSummary:
    mean: float | None
    std: float | None
    n: int
    note: str = ""


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)  # one per (model, image)
    summary: dict[str, dict[str, MetricSummary]] = field(default_factory=dict)  # model → metric → summary
    unavailable: dict[str, str] = field(default_factory=dict)  # metric → reason
    lower_better: dict[str, bool] = field(default_factory=dict)
    efficiency: dict[str, dict] = field(default_factory=dict)  # model → Efficiency.as_dict()
    models: dict[str, dict] = field(default_factory=dict)  # model → describe()
    outputs: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # model → item index → SR uint8
    step_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # adaptive models: steps per region, last image


def build_metrics(names: list[str], env: MetricEnv) -> tuple[dict, dict[str, str]]:
    metrics, unavailable = {}, {}
    for name in names:
        try:
            metrics[name] = build_metric(name, env)
        except MetricUnavailable as exc:
            unavailable[name] = str(exc)
            log.warning("metric %s %s", name, exc)
    return metrics, unavailable


def _summarise(values: list[float | None], note: str = "") -> MetricSummary:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return MetricSummary(None, None, 0, note or "no image had a value")
    return MetricSummary(statistics.fmean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0, len(vals), note)


@dataclass
class Scored:
    """One model on a slice of the items: what a worker sends back (plain values and small arrays)."""

    rows: list[dict]
    values: dict[str, list[float | None]]  # per-image metric → value per item of the slice, in order
    dist: dict[str, dict[str, np.ndarray]]  # distribution metric → its accumulated state (``state()``)
    outputs: dict[int, np.ndarray]  # item index → SR uint8, for the kept (grid) items


def score_items(model_name: str, up, items: list[EvalItem], indices: list[int], metrics: dict,
                keep_outputs: set[int]) -> Scored:
    """Run ``up`` on ``items`` (whose global indices are ``indices``) and score each output."""
    per_metric: dict[str, list[float | None]] = {n: [] for n, m in metrics.items() if m.info.mode != "DIST"}
    dist = {n: m for n, m in metrics.items() if m.info.mode == "DIST"}
    for m in dist.values():
        m.reset()
    rows, outputs = [], {}
    for idx, item in zip(indices, items):
        lr = to_tensor(item.lr)
        size = tuple(item.hr.shape[:2]) if item.hr is not None else None
        t0 = time.perf_counter()
        with torch.no_grad():
            sr_f = up(lr, size)
        seconds = time.perf_counter() - t0
        sr_u8 = to_uint8(sr_f)
        sr = to_tensor(sr_u8)
        hr = to_tensor(item.hr) if item.hr is not None else None
        if hr is not None and sr.shape != hr.shape:
            raise RuntimeError(f"{model_name} produced {tuple(sr.shape)} for {item.name}, HR is {tuple(hr.shape)}")
        row = {"image": item.name, "model": model_name, "lr_size": f"{item.lr.shape[1]}x{item.lr.shape[0]}",
               "seconds": round(seconds, 4)}
        for name in per_metric:
            m = metrics[name]
            if m.info.mode == "FR" and hr is None:
                row[name], row[f"{name}_note"] = None, "no HR"
                per_metric[name].append(None)
                continue
            try:
                val = float(m.score(sr, hr if m.info.mode == "FR" else None)[0])
            except ImageTooSmall as exc:
                val, row[f"{name}_note"] = None, str(exc)
            if val is not None and not math.isfinite(val):
                row[f"{name}_note"] = "non-finite score"
            row[name] = val
            per_metric[name].append(val)
        if hr is not None:
            for m in dist.values():
                m.update(sr, hr)
        if idx in keep_outputs:
            outputs[idx] = sr_u8
        rows.append(row)
    return Scored(rows, per_metric, {n: m.state() for n, m in dist.items()}, outputs)


def summarise(res: EvalResult, model_name: str, parts: list[Scored], metrics: dict, has_hr: bool) -> None:
    """Fold a model's slices (in item order) into ``res``: rows, kept outputs, per-metric summaries."""
    res.outputs[model_name] = {}
    values: dict[str, list[float | None]] = {n: [] for n, m in metrics.items() if m.info.mode != "DIST"}
    for part in parts:
        res.rows.extend(part.rows)
        res.outputs[model_name].update(part.outputs)
        for n in values:
            values[n].extend(part.values[n])
    summ = {n: _summarise(v, "" if has_hr or metrics[n].info.mode != "FR" else "n/a: no HR")
            for n, v in values.items()}
    for n, m in metrics.items():
        if m.info.mode != "DIST":
            continue
        if not has_hr:
            summ[n] = MetricSummary(None, None, 0, "n/a: no HR")
            continue
        m.reset()
        m.load_states([p.dist[n] for p in parts])  # concatenated in item order: the same numbers as one pass
        try:
            summ[n] = MetricSummary(m.compute(), None, m.count, f"over {m.count} images")
        except ValueError as exc:
            summ[n] = MetricSummary(None, None, m.count, str(exc))
    summ["seconds_per_image"] = _summarise([r["seconds"] for r in res.rows if r["model"] == model_name])
    res.summary[model_name] = summ


class Deferred:
    """A model of the table, built when ``evaluate_models`` needs it in this process, in its turn — never, when
    a cluster scores and nothing is timed here (a 2B-parameter teacher then stays off the driver), and then
    ``scorer.describe(name)`` (the model as its tasks described it) stands in for its ``describe()``. Loaders
    may still cache what they built (``materialize_teacher`` keeps the last two teachers)."""

    def __init__(self, build: Callable[[], object]):
        self.build = build


def efficiency_example(items: list[EvalItem], scale: int, side: int | None) -> torch.Tensor:
    """The timed input: the first evaluation image's LR (a photo: a model whose work depends on the content, as
    adaptive step skipping does, is timed on what it will meet, not on noise), centre-cropped — or reflected —
    to ``side`` when set."""
    lr = to_tensor(items[0].lr)
    if items[0].hr is not None and items[0].hr.shape == items[0].lr.shape:  # LQ stored at HR size
        lr = torch.nn.functional.interpolate(lr, scale_factor=1 / scale, mode="area")
    if side is None:
        return lr
    h, w = lr.shape[-2:]
    if h < side or w < side:
        lr = torch.nn.functional.pad(lr, (0, max(0, side - w), 0, max(0, side - h)),
                                     mode="reflect" if min(h, w) > side - min(h, w) else "replicate")
        h, w = lr.shape[-2:]
    i, j = (h - side) // 2, (w - side) // 2
    return lr[..., i : i + side, j : j + side].contiguous()


def evaluate_models(items: list[EvalItem], upscalers: dict, metric_names: list[str], env: MetricEnv,
                    keep_outputs: set[int], eff: EfficiencyConfig,
                    scorer: Callable[[str], list[Scored]] | None = None) -> EvalResult:
    """Score every model (an upscaler, or a ``Deferred`` one); ``scorer(model_name)`` (e.g. Ray tasks on a
    cluster, ``tasks/evaluate/cluster.py``) returns a model's slices in item order instead of scoring here,
    and its optional ``describe(model_name)`` spares building the model here. Efficiency is always measured
    here, in one process, after scoring, every model in interleaved rounds (``measure_many``)."""
    res = EvalResult()
    timed: dict[str, object] = {}
    metrics, res.unavailable = build_metrics(metric_names, env)
    has_hr = all(it.hr is not None for it in items)
    for name, m in metrics.items():
        res.lower_better[name] = m.info.lower_better
    for model_name, up in upscalers.items():
        parts = scorer(model_name) if scorer else None  # the cluster first: the driver holds no model meanwhile
        described = getattr(scorer, "describe", None)
        if isinstance(up, Deferred):  # built only to score or time it here (or when no task described it)
            up = up.build() if scorer is None or eff.enabled or described is None else None
        if parts is None:
            parts = [score_items(model_name, up, items, list(range(len(items))), metrics, keep_outputs)]
        summarise(res, model_name, parts, metrics, has_hr)
        # described after scoring: adaptive models report the steps they spent on these images
        res.models[model_name] = up.describe() if up is not None else described(model_name)
        if up is not None:
            step_map = getattr(getattr(up, "model", None), "last_map", None)
            if step_map is not None:
                res.step_maps[model_name] = step_map.clone()
        if eff.enabled and items:
            timed[model_name] = up
    if timed:  # side by side: interleaved rounds, so a slower moment of the machine hits every model alike
        example = efficiency_example(items, next(iter(timed.values())).scale, eff.lr_size)
        for name, e in measure_many(timed, example, warmup=eff.warmup, reps=eff.reps).items():
            res.efficiency[name] = e.as_dict()
    return res
