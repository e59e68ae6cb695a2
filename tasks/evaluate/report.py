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


def summary_markdown(result: EvalResult, n_images: int, conventions: dict, skipped: dict[str, str] | None = None) -> str:
    metrics = metric_columns(result)
    arrow = {m: "↓" if result.lower_better.get(m) else "↑" for m in metrics}
    head = ["model"] + [f"{m} {arrow[m]}" for m in metrics] + ["latency ms ↓", "GMACs ↓", "params M ↓", "peak MB ↓"]
    lines = [f"# Evaluation ({n_images} images)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, summ in result.summary.items():
        cells = [model]
        for m in metrics:
            s = summ[m]
            cells.append("n/a" if s.mean is None else (_fmt(s.mean) if s.std is None else f"{_fmt(s.mean)} ± {_fmt(s.std)}"))
        e = result.efficiency.get(model, {})
        cells += [_fmt(e.get("latency_ms"), 2) if e else "n/a", _fmt(e["macs"] / 1e9, 3) if e else "n/a",
                  _fmt(e["params"] / 1e6, 3) if e else "n/a", _fmt(e.get("peak_mem_mb"), 1) if e else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "mean ± std (population) over the images that have a value; FID over the whole set."]
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


def _label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + GRID_LABEL_H), (255, 255, 255))
    out.paste(img, (0, GRID_LABEL_H))
    ImageDraw.Draw(out).text((3, 3), text, fill=(0, 0, 0))
    return out


def grid_image(item: EvalItem, panels: list[tuple[str, np.ndarray]], crop: int) -> Image.Image:
    """LQ (nearest-upsampled) | each model | HQ, centre-cropped to ``crop`` HR pixels, labelled."""
    ref = panels[0][1]
    h, w = ref.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    lq = Image.fromarray(item.lr).resize((w, h), Image.NEAREST)
    tiles = [("LQ", np.asarray(lq))] + panels + ([("HQ", item.hr)] if item.hr is not None else [])
    imgs = [_label(Image.fromarray(np.ascontiguousarray(a[top : top + ch, left : left + cw])), t) for t, a in tiles]
    grid = Image.new("RGB", (sum(i.width for i in imgs) + 2 * (len(imgs) - 1), imgs[0].height), (255, 255, 255))
    x = 0
    for im in imgs:
        grid.paste(im, (x, 0))
        x += im.width + 2
    return grid


def write_reports(result: EvalResult, items: list[EvalItem], out: Path, conventions: dict, crop: int,
                  skipped: dict[str, str] | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(result)
    notes = sorted({k for r in result.rows for k in r if k.endswith("_note")})
    files = {"per_image_csv": out / "per_image.csv", "summary_csv": out / "summary.csv",
             "summary_md": out / "summary.md", "efficiency_json": out / "efficiency.json"}
    atomic_write_bytes(files["per_image_csv"], _csv_bytes(result.rows, ["image", "model", "lr_size", "seconds"] + metrics + notes))
    atomic_write_bytes(files["summary_csv"], _csv_bytes(summary_rows(result), ["model", "metric", "mean", "std", "n",
                                                                                 "lower_better", "note"]))
    atomic_write_bytes(files["summary_md"], summary_markdown(result, len(items), conventions, skipped).encode())
    atomic_write_bytes(files["efficiency_json"], json.dumps(result.efficiency, indent=2, sort_keys=True).encode())
    grid_ids = sorted(set.intersection(*[set(o) for o in result.outputs.values()])) if result.outputs else []
    for idx in grid_ids:
        panels = [(m, result.outputs[m][idx]) for m in result.outputs]
        safe = items[idx].name.replace("/", "__").replace("#", "_")
        path = out / "grids" / f"{idx:04d}_{Path(safe).stem}.png"
        buf = io.BytesIO()
        grid_image(items[idx], panels, crop).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        files[f"grid_{idx}"] = path
    return files
