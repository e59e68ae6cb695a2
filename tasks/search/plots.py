"""Plots of a search: gate trajectories (probability of each option over steps, per group) and the loss curve."""

from __future__ import annotations

from pathlib import Path

from srcompress.infra.store import atomic_write_bytes
from srcompress.tasks.common.plots import png_bytes, pyplot


def write_plots(result: dict, out: Path) -> dict[str, Path]:
    plt = pyplot()
    hist = result["history"]
    files: dict[str, Path] = {}
    if not hist:
        return files
    steps = [h["step"] for h in hist]
    groups = len(hist[0]["probs"])
    labels = ["".join(str(v) for v in o) for o in result["options"]]
    fig, axes = plt.subplots(1, groups, figsize=(4 * groups, 3), squeeze=False)
    for g in range(groups):
        ax = axes[0][g]
        for o, label in enumerate(labels):
            ax.plot(steps, [h["probs"][g][o] for h in hist], label=label)
        ax.set_title(f"group {g}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("option probability (EMA logits)")
    axes[0][-1].legend(fontsize=6, loc="upper left")
    files["gates.png"] = out / "gates.png"
    atomic_write_bytes(files["gates.png"], png_bytes(fig))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, [h["loss"] for h in hist])
    ax.set_xlabel("step")
    ax.set_ylabel("L1 to the cached teacher latent")
    files["loss.png"] = out / "loss.png"
    atomic_write_bytes(files["loss.png"], png_bytes(fig))
    return files

