"""The redundancy report: per-block means / std / ranks per score, per-image distributions as box-plots
(PGP-DiffSR Fig. 3 style), and the rank agreement between scores (Kendall τ).

    files = write_report(names, scores, out_dir, info)   # report.json, blocks.csv, boxplot_<score>.png, kendall.png
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
from scipy.stats import kendalltau

from srcompress.infra.store import atomic_write_bytes
from srcompress.models.pruning.redundancy import IMPORTANCE_SIGN, importance, rank
from srcompress.tasks.common.plots import png_bytes, pyplot

LABELS = {"block_influence": "block influence  1 − cos(in, out)", "pgp_cos": "PGP Φ_cos along the LQ→HQ path",
          "pgp_kl": "PGP Ψ_KL along the LQ→HQ path (softmax over channels)",
          "removal_l1": "removal: mean |Δ restored latent|", "removal_psnr_y": "removal: PSNR-Y vs unpruned (dB)"}


def summarise(names: list[str], scores: dict[str, torch.Tensor]) -> dict:
    imp = importance(scores)
    out = {"blocks": names, "scores": {}, "kendall_tau": {}}
    for k, v in scores.items():
        order = rank(imp[k])  # least → most important
        out["scores"][k] = {"mean": v.mean(-1).tolist(), "std": v.std(-1, unbiased=False).tolist(),
                            "importance_sign": IMPORTANCE_SIGN[k], "least_important_first": [names[i] for i in order],
                            "rank": [order.index(i) for i in range(len(names))]}
    keys = list(scores)
    for a in keys:
        out["kendall_tau"][a] = {}
        for b in keys:
            tau = kendalltau(imp[a].numpy(), imp[b].numpy()).statistic
            out["kendall_tau"][a][b] = None if tau != tau else float(tau)  # NaN (constant scores) → null
    return out


def write_report(names: list[str], scores: dict[str, torch.Tensor], out: Path, info: dict) -> dict[str, Path]:
    plt = pyplot()
    summary = summarise(names, scores) | info
    files = {"report.json": out / "report.json", "blocks.csv": out / "blocks.csv"}
    atomic_write_bytes(files["report.json"], json.dumps(summary, indent=1, sort_keys=True).encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["block"] + [f"{k}.{s}" for k in scores for s in ("mean", "std", "rank")])
    for j, name in enumerate(names):
        w.writerow([name] + [f"{summary['scores'][k][s][j]:.6g}" if s != "rank" else summary["scores"][k][s][j]
                             for k in scores for s in ("mean", "std", "rank")])
    atomic_write_bytes(files["blocks.csv"], buf.getvalue().encode())
    short = [n.split(".")[-1] if n.startswith("transformer_blocks") else n for n in names]
    for k, v in scores.items():
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
        ax.boxplot([v[j].numpy() for j in range(len(names))], tick_labels=short, showfliers=True)
        ax.set_title(LABELS.get(k, k), fontsize=9)
        ax.set_xlabel("block")
        files[f"boxplot_{k}.png"] = out / f"boxplot_{k}.png"
        atomic_write_bytes(files[f"boxplot_{k}.png"], png_bytes(fig, dpi=110))
    keys = list(scores)
    mat = [[summary["kendall_tau"][a][b] if summary["kendall_tau"][a][b] is not None else float("nan")
            for b in keys] for a in keys]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    for i in range(len(keys)):
        for j in range(len(keys)):
            ax.text(j, i, "–" if mat[i][j] != mat[i][j] else f"{mat[i][j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im)
    ax.set_title("rank agreement between scores (Kendall τ)", fontsize=9)
    files["kendall.png"] = out / "kendall.png"
    atomic_write_bytes(files["kendall.png"], png_bytes(fig, dpi=110))
    return files
