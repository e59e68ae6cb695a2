"""Evaluation reports: per-image CSV, summary table (markdown + CSV, mean ± std), comparison grids (PNG).

    files = write_reports(result, items, out_dir, conventions)   # {"per_image_csv": Path, "summary_md": …, …}
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from srcompress.infra.store import atomic_write_bytes
from srcompress.tasks.evaluate.datasets import EvalItem
from srcompress.tasks.evaluate.phase import phase_fidelity, phase_markdown, phase_only
from srcompress.tasks.evaluate.retention import (ablations, ablations_markdown, efficiency_ratios, retention,
                                                 retention_markdown)
from srcompress.tasks.evaluate.runner import EvalResult

GRID_LABEL_H = 18


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"


def _csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue().encode()


def metric_columns(result: EvalResult) -> list[str]:
    first = next(iter(result.summary.values()), {})
    return [m for m in first if m != "seconds_per_image"]


def summary_rows(result: EvalResult) -> list[dict]:
    rows = []
    for model, summ in result.summary.items():
        for metric, s in summ.items():
            rows.append({"model": model, "metric": metric, "mean": s.mean, "std": s.std, "n": s.n,
                         "lower_better": result.lower_better.get(metric, True if metric == "seconds_per_image" else ""),
                         "note": s.note})
        for k, v in result.efficiency.get(model, {}).items():
            if isinstance(v, (int, float)) and k not in ("warmup", "reps", "threads"):
                rows.append({"model": model, "metric": f"efficiency.{k}", "mean": v, "std": None, "n": 1,
                             "lower_better": True, "note": ""})
    for metric, reason in result.unavailable.items():
        rows.append({"model": "*", "metric": metric, "mean": None, "std": None, "n": 0, "lower_better": "",
                     "note": reason})
    return rows


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_MAX_REASONS = 4


def _marker(i: int) -> str:
    return str(i).translate(_SUPERSCRIPT)


def _reason(text: str) -> str:
    return (text or "").strip().removeprefix("n/a: ")


def _missing_by_model(result: EvalResult, metric: str) -> dict[str, tuple[int, int, dict[str, list[str]]]]:
    """model → (images lacking a value, images, reason → image names) for a cell that is n/a or partial."""
    out = {}
    for model, summ in result.summary.items():
        rows = [r for r in result.rows if r.get("model") == model]
        s = summ.get(metric)
        if metric in result.unavailable or s is None:
            reasons = {_reason(result.unavailable.get(metric, "")) or "not computed": [r["image"] for r in rows]}
            out[model] = (len(rows), len(rows), reasons)
            continue
        if not any(metric in r for r in rows):  # set-level metric (FID): one value over the whole set
            if s.mean is None:
                out[model] = (len(rows), len(rows), {_reason(s.note) or "no value": [r["image"] for r in rows]})
            continue
        reasons: dict[str, list[str]] = {}
        for r in rows:
            v = r.get(metric)
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                why = r.get(f"{metric}_note") or ("non-finite score" if v is not None else _reason(s.note) or "no value")
                reasons.setdefault(_reason(why), []).append(r["image"])
        if reasons:
            out[model] = (sum(len(v) for v in reasons.values()), len(rows), reasons)
    return out


def _metric_footnote(metric: str, missing: dict[str, tuple[int, int, dict[str, list[str]]]], models: list[str]) -> str:
    counts = {m: (k, n) for m, (k, n, _) in missing.items()}
    if len(counts) == len(models) and len(set(counts.values())) == 1:
        k, n = next(iter(counts.values()))
        who = f"{k}/{n} images of every model" if len(models) > 1 else f"{k}/{n} images of {models[0]}"
    else:
        who = ", ".join(f"{k}/{n} images of {m}" for m, (k, n) in counts.items())
    images: dict[str, set[str]] = {}
    for _, _, reasons in missing.values():
        for why, names in reasons.items():
            images.setdefault(why, set()).update(names)
    ranked = sorted(images.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = [why if len(ranked) == 1 else f"{why} ({len(names)} images)" for why, names in ranked[:_MAX_REASONS]]
    if len(ranked) > _MAX_REASONS:
        parts.append(f"… and {len(ranked) - _MAX_REASONS} more reasons (per-image notes in per_image.csv)")
    return f"{metric}: no value for {who} — " + "; ".join(parts)


def _efficiency_footnote(result: EvalResult) -> str:
    """The peak-memory method and the latency protocol, per model (merged when every model shares them)."""
    def protocol(e: dict) -> str:
        shape = "×".join(str(d) for d in e.get("input_shape", ())) or "?"
        mem = e.get("memory_method", "?")
        rounds = " in interleaved rounds (every model once per round, order rotated)" if e.get("interleaved") else ""
        return (f"peak MB: {mem}; latency: median (min–max) of {e.get('reps', '?')} timed calls{rounds} after "
                f"{e.get('warmup', '?')} warm-up calls, torch threads {e.get('threads', '?')}, input {shape}"
                + (f", device {e['device']}" if e.get("device") else "")
                + "; MACs by torch FlopCounterMode (FLOPs / 2)")

    by = {m: protocol(e) for m, e in result.efficiency.items() if e}
    if len(set(by.values())) == 1:
        return f"efficiency ({', '.join(by)}): {next(iter(by.values()))}"
    return "efficiency: " + " | ".join(f"{m}: {p}" for m, p in by.items())


def summary_markdown(result: EvalResult, n_images: int, conventions: dict, skipped: dict[str, str] | None = None) -> str:
    """The summary table; every n/a cell (and every mean over fewer than all images) carries a superscript
    marker whose footnote below the table gives the reason and how many images lacked a value."""
    metrics = metric_columns(result)
    metrics += [m for m in result.unavailable if m not in metrics]  # requested but unavailable: n/a columns
    models = list(result.summary)
    arrow = {m: ("↓" if result.lower_better[m] else "↑") if m in result.lower_better else "" for m in metrics}
    footnotes: list[str] = []
    marks: dict[str, str] = {}

    def mark(key: str, text: str) -> str:
        if key not in marks:
            footnotes.append(text)
            marks[key] = _marker(len(footnotes))
        return marks[key]

    eff_mark = mark("efficiency", _efficiency_footnote(result)) if result.efficiency else ""
    head = (["model"] + [f"{m} {arrow[m]}".rstrip() for m in metrics]
            + [f"latency ms ↓{eff_mark}", f"GMACs ↓{eff_mark}", "params M ↓", f"peak MB ↓{eff_mark}"])
    lines = [f"# Evaluation ({n_images} images)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missing = {m: _missing_by_model(result, m) for m in metrics}
    for model, summ in result.summary.items():
        cells = [model]
        for m in metrics:
            s = summ.get(m)
            text = "n/a" if s is None or s.mean is None else (
                _fmt(s.mean) if s.std is None else f"{_fmt(s.mean)} ± {_fmt(s.std)}")
            if model in missing[m] or text == "n/a":
                text += mark(f"metric:{m}", _metric_footnote(m, missing[m], models) if missing[m]
                             else f"{m}: no value — {_reason(getattr(s, 'note', '')) or 'not computed'}")
            cells.append(text)
        e = result.efficiency.get(model, {})
        if not e:
            na = "n/a" + mark("efficiency:none", "efficiency: not measured (evaluate.efficiency.enabled is false, "
                                                 "or no images)")
            cells += [na] * 4
        else:
            peak = _fmt(e.get("peak_mem_mb"), 1)
            if peak == "n/a":
                peak += mark(f"peak:{e.get('memory_method')}", f"peak MB ({model}): {e.get('memory_method')}")
            lat = _fmt(e.get("latency_ms"), 2)
            if e.get("latency_min_ms") is not None:
                lat += f" ({_fmt(e['latency_min_ms'], 2)}–{_fmt(e['latency_max_ms'], 2)})"
            if e.get("latency_outliers"):
                lat += mark(f"outliers:{model}", f"latency ({model}): {e['latency_outliers']} of {e.get('reps')} "
                                                 "timed calls above median + 3 robust σ (kept in the median)")
            cells += [lat, _fmt(e["macs"] / 1e9, 3), _fmt(e["params"] / 1e6, 3), peak]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "mean ± std (population) over the images that have a value; FID over the whole set."]
    if footnotes:
        lines += [""] + [f"- {_marker(i)} {t}" for i, t in enumerate(footnotes, 1)]
    notes = {f"{model}/{m}": s.note for model, summ in result.summary.items() for m, s in summ.items() if s.note}
    if notes:
        lines += ["", "## Notes", ""] + [f"- {k}: {v}" for k, v in sorted(notes.items())]
    if result.unavailable:
        lines += ["", "## Unavailable metrics", ""] + [f"- {m}: {r}" for m, r in result.unavailable.items()]
    if skipped:
        lines += ["", f"## Skipped inputs ({len(skipped)})", ""] + [f"- {k}: {v}" for k, v in sorted(skipped.items())]
    lines += ["", "## Conventions", "", "```json", json.dumps(conventions, indent=2, sort_keys=True, default=str),
              "```", "", "## Models", "", "```json", json.dumps(result.models, indent=2, sort_keys=True, default=str),
              "```"]
    if result.efficiency:
        lines += ["", "## Efficiency protocol", "", "```json",
                  json.dumps(result.efficiency, indent=2, sort_keys=True, default=str), "```"]
    return "\n".join(lines) + "\n"


def item_source(name: str) -> str:
    """The source an item was cut from: its name without a pairs set's ``#<crop index>`` suffix
    (``kodak/I04.bmp#3`` → ``kodak/I04.bmp``; datasets.py names pairs items ``<name>#<crop_index>``)."""
    return name.rsplit("#", 1)[0] if "#" in name else name


def grid_indices(names: list[str], n: int) -> list[int]:
    """Up to ``n`` item indices spread over the distinct sources: round-robin over the sources in sorted
    order, each source's items in their order (first item of every source first). Deterministic."""
    if n <= 0:
        return []
    by_source: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_source.setdefault(item_source(name), []).append(i)
    queues = [by_source[s] for s in sorted(by_source)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < n:
                picked.append(q[depth])
        depth += 1
    return picked


def _label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + GRID_LABEL_H), (255, 255, 255))
    out.paste(img, (0, GRID_LABEL_H))
    ImageDraw.Draw(out).text((3, 3), text, fill=(0, 0, 0))
    return out


def _tiles(item: EvalItem, panels: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """LQ (nearest-upsampled to the panels' size) | each model | HQ."""
    h, w = panels[0][1].shape[:2]
    lq = np.asarray(Image.fromarray(item.lr).resize((w, h), Image.NEAREST))
    return [("LQ", lq)] + panels + ([("HQ", item.hr)] if item.hr is not None else [])


def _strip(tiles: list[tuple[str, np.ndarray]], crop: int) -> Image.Image:
    """The tiles side by side (2 px apart), each centre-cropped to ``crop`` pixels and labelled."""
    h, w = tiles[0][1].shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    imgs = [_label(Image.fromarray(np.ascontiguousarray(a[top : top + ch, left : left + cw])), t) for t, a in tiles]
    strip = Image.new("RGB", (sum(i.width for i in imgs) + 2 * (len(imgs) - 1), imgs[0].height), (255, 255, 255))
    x = 0
    for im in imgs:
        strip.paste(im, (x, 0))
        x += im.width + 2
    return strip


def grid_image(item: EvalItem, panels: list[tuple[str, np.ndarray]], crop: int) -> Image.Image:
    """LQ (nearest-upsampled) | each model | HQ, centre-cropped to ``crop`` HR pixels, labelled."""
    return _strip(_tiles(item, panels), crop)


def phase_figure(item: EvalItem, panels: list[tuple[str, np.ndarray]], crop: int) -> Image.Image:
    """The grid over its phase-only reconstructions (each computed on the whole image, then cropped): PGP-DiffSR's
    Fig. 1 for every model of the table."""
    tiles = _tiles(item, panels)
    rows = [_strip(tiles, crop), _strip([(f"{t} phase", np.repeat(phase_only(a)[..., None], 3, -1))
                                         for t, a in tiles], crop)]
    fig = Image.new("RGB", (rows[0].width, 2 * rows[0].height + 2), (255, 255, 255))
    fig.paste(rows[0], (0, 0))
    fig.paste(rows[1], (0, rows[0].height + 2))
    return fig


def _stem(item: EvalItem) -> str:
    """A file name for an evaluation item (``set/image#k`` → ``set__image_k``)."""
    return Path(item.name.replace("/", "__").replace("#", "_")).stem


def vae_markdown(report: dict) -> str:
    """The compress_vae step's reconstruction figures, the compressed VAE beside the teacher's (TinySR Table 3)."""
    ev = report["eval"]
    lines = ["## VAE reconstruction (compress_vae)", "",
             f"Encode → posterior mean → decode on {ev['count']} {ev['images']} of {ev['size'][0]}×{ev['size'][1]} px; "
             "MACs per image at that size.", "",
             "| VAE | widths | params | MACs | PSNR | SSIM | ST-LPIPS ↓ |", "|---|---|---|---|---|---|---|"]
    for label, widths, params in (("teacher_vae", report["teacher_widths"], report["params_teacher"]),
                                  ("compressed_vae", report["widths"], report["params"])):
        r = report["reconstruction"][label]
        lines.append(f"| {label} | {widths} | {params / 1e6:.3f}M | {report['macs_per_image'][label] / 1e9:.3f}G | "
                     f"{_fmt(r['psnr'], 2)} | {_fmt(r['ssim'])} | {_fmt(r['st_lpips'])} |")
    return "\n".join(lines) + "\n"


def write_reports(result: EvalResult, items: list[EvalItem], out: Path, conventions: dict, crop: int,
                  skipped: dict[str, str] | None = None, vae_report: dict | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(result)
    notes = sorted({k for r in result.rows for k in r if k.endswith("_note")})
    files = {"per_image_csv": out / "per_image.csv", "summary_csv": out / "summary.csv",
             "summary_md": out / "summary.md", "efficiency_json": out / "efficiency.json",
             "models_json": out / "models.json"}
    atomic_write_bytes(files["per_image_csv"], _csv_bytes(result.rows, ["image", "model", "lr_size", "seconds"] + metrics + notes))
    atomic_write_bytes(files["summary_csv"], _csv_bytes(summary_rows(result), ["model", "metric", "mean", "std", "n",
                                                                                 "lower_better", "note"]))
    md = summary_markdown(result, len(items), conventions, skipped)
    if "teacher" in result.summary and len(result.summary) > 2:  # something besides bicubic and the teacher
        ret = retention(result)
        files["retention_json"] = out / "retention.json"
        abl = ablations(result)
        atomic_write_bytes(files["retention_json"], json.dumps({**ret, "efficiency": efficiency_ratios(result),
                                                                "ablations": abl}, indent=1, sort_keys=True).encode())
        md = md.rstrip() + "\n\n" + retention_markdown(ret, efficiency_ratios(result))
        if abl["rows"]:
            md = md.rstrip() + "\n\n" + ablations_markdown(abl)
    if vae_report is not None:
        md = md.rstrip() + "\n\n" + vae_markdown(vae_report)
    grid_ids = sorted(set.intersection(*[set(o) for o in result.outputs.values()])) if result.outputs else []
    phase = phase_report(items, result, grid_ids, crop, out, files)
    if phase:
        md = md.rstrip() + "\n\n" + phase_markdown(phase)
    atomic_write_bytes(files["summary_md"], md.encode())
    atomic_write_bytes(files["efficiency_json"], json.dumps(result.efficiency, indent=2, sort_keys=True).encode())
    atomic_write_bytes(files["models_json"], json.dumps(result.models, indent=2, sort_keys=True, default=str).encode())
    for idx in grid_ids:
        panels = [(m, result.outputs[m][idx]) for m in result.outputs]
        path = out / "grids" / f"{idx:04d}_{_stem(items[idx])}.png"
        buf = io.BytesIO()
        grid_image(items[idx], panels, crop).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        files[f"grid_{idx}"] = path
    return files


def phase_report(items: list[EvalItem], result: EvalResult, grid_ids: list[int], crop: int, out: Path,
                 files: dict[str, Path]) -> dict[str, list[float]]:
    """Phase fidelity to the HQ of every model on the grid images (``phase.json``) and, for the first, the
    phase-only reconstruction figure (``phase/<image>.png``); nothing for LR-only sets."""
    ids = [i for i in grid_ids if items[i].hr is not None]
    scores = {m: [phase_fidelity(result.outputs[m][i], items[i].hr) for i in ids] for m in result.outputs} if ids else {}
    if ids:
        item = items[ids[0]]
        fig = phase_figure(item, [(m, result.outputs[m][ids[0]]) for m in result.outputs], crop)
        buf = io.BytesIO()
        fig.save(buf, format="PNG")
        files["phase_png"] = out / "phase" / f"{_stem(item)}.png"
        atomic_write_bytes(files["phase_png"], buf.getvalue())
        files["phase_json"] = out / "phase.json"
        atomic_write_bytes(files["phase_json"], json.dumps({"images": [items[i].name for i in ids],
                                                            "fidelity": scores}, indent=1).encode())
    return scores
