"""Student vs teacher, measured side by side in one run: inference latency, and training throughput of both
distillation stages at 1 vs 2 DeepSpeed ranks.

    .venv/bin/python bench/distill.py [--sizes 128 512] [--reps 5] [--steps 20] [--workdir DIR] [--no-train] [--unet]

Latency: the teacher of the embedded default (configs/tiny.yaml's bootstrap architecture; weights do not
change the cost, so it is built from config) against its student at the preset's N:M depth — pruned,
pruned + streamlined, and with the tiny VAE — each wrapped as the evaluation runs them (``DiffusionSR``:
bicubic ×4, latent tiles, colour fix), median of ``reps`` calls after warm-up, at each HR size.
``--unet`` adds an SD-UNet teacher with SD2.1's block layout at 1/5 of its width (4 stages, 2 layers each,
cross-attention in the first 3), against BK-SDM-style students built by ``build_student`` from unit masks:
``base`` (the second resnet/attention pair of every down stage) and ``small`` (base + the mid block).
Training: the distillation stages of the embedded default on a small workdir (prerequisite steps computed
once and cached), ``--steps`` steps each at 1 and 2 ranks; steps/s from the loop's own clock (no start-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def median_ms(fn, x, reps: int, warmup: int = 2) -> float:
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def latency(sizes: list[int], reps: int) -> None:
    import torch

    from srcompress.config import load_config
    from srcompress.models.student.student import build_student
    from srcompress.models.student.tiny_vae import tiny_vae_for
    from srcompress.models.teachers.tiny import tiny_sd3_teacher
    from srcompress.models.upscalers import DiffusionSR

    cfg = load_config("tiny")
    b, s = cfg.teacher.bootstrap, cfg.search
    teacher = tiny_sd3_teacher(seed=0, num_layers=b.num_layers, latent_channels=b.latent_channels,
                               head_dim=b.head_dim, heads=b.heads, text_dim=b.text_dim, pooled_dim=b.pooled_dim,
                               prompt_len=b.prompt_len, vae_channels=tuple(b.vae_channels),
                               vae_norm_groups=b.vae_norm_groups, patch_size=b.patch_size, tile=b.tile,
                               tile_overlap=b.tile_overlap, vae_identity=b.vae_init == "identity").eval()
    mask = [float(i % s.m < s.n) for i in range(b.num_layers)]
    pruned = build_student(teacher, mask)
    fast = build_student(teacher, mask, streamline=True)
    tiny = build_student(teacher, mask, streamline=True)
    tiny.vae = tiny_vae_for(tiny, cfg.distill.tiny_vae.width, cfg.distill.tiny_vae.blocks).eval()
    models = {"teacher": teacher, "pruned": pruned, "pruned+streamlined": fast, "+tiny VAE": tiny}
    color = cfg.evaluate.inference.color_fix
    print(f"torch threads {torch.get_num_threads()}; depth {sum(mask):.0f}/{b.num_layers} blocks; colour fix {color}")
    for hr in sizes:
        x = torch.rand(1, 3, hr // 4, hr // 4, generator=torch.Generator().manual_seed(0))
        ms = {n: median_ms(DiffusionSR(m, 4, n, color_fix=color), x, reps) for n, m in models.items()}
        row = "  ".join(f"{n} {v:8.1f} ms ({ms['teacher'] / v:.2f}×)" for n, v in ms.items())
        print(f"HR {hr:4d}px: {row}")


def unet_latency(sizes: list[int], reps: int) -> None:
    import torch

    from srcompress.models.student.student import build_student
    from srcompress.models.teachers.tiny import tiny_unet_teacher
    from srcompress.models.upscalers import DiffusionSR

    teacher = tiny_unet_teacher(seed=0, cross_dim=64, layers_per_block=2, block_out_channels=(64, 128, 256, 256),
                                norm_groups=32).eval()
    names = [n for n, _ in teacher.prunable_blocks()]
    base = {n for n in names if n.startswith("down_blocks.") and n.split(".")[-1] == "1"}
    small = base | {n for n in names if n.startswith("mid_block.")}
    models = {"teacher": teacher}
    for label, masked in (("bk-base", base), ("bk-small", small)):
        models[label] = build_student(teacher, [0.0 if n in masked else 1.0 for n in names])
    params = {n: sum(p.numel() for p in m.backbone.parameters()) for n, m in models.items()}
    print(f"SD-UNet layout at 1/5 width; {len(names)} prunable units; UNet params " +
          "  ".join(f"{n} {v / 1e6:.2f}M ({v / params['teacher']:.2f})" for n, v in params.items()))
    for hr in sizes:
        x = torch.rand(1, 3, hr // 4, hr // 4, generator=torch.Generator().manual_seed(0))
        ms = {n: median_ms(DiffusionSR(m, 4, n, color_fix="none"), x, reps) for n, m in models.items()}
        row = "  ".join(f"{n} {v:8.1f} ms ({ms['teacher'] / v:.2f}×)" for n, v in ms.items())
        print(f"HR {hr:4d}px: {row}")


def training(work: Path, steps: int) -> None:
    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline

    base = ["data.bundled_sets=[sklearn, kodak]", "degrade.crops_per_image=2", "teacher.bootstrap.restorer_steps=50",
            "search.steps=10", f"distill.stage1.steps={steps}", f"distill.stage2.steps={steps}",
            "distill.checkpoint_every=0", "distill.log_every=5"]
    print(f"training throughput (steps/s, loop clock), {steps} steps per stage:")
    rates = {}
    for workers in (1, 2):
        out = run_pipeline(load_config("tiny", base + [f"distill.num_workers={workers}"]), work, until="distill_pixel")
        for step in ("distill_latent", "distill_pixel"):
            m = out["steps"][step]
            rates[(step, workers)] = m["counts"]["steps"] / m["extra"]["train_seconds"]
    for step in ("distill_latent", "distill_pixel"):
        one, two = rates[(step, 1)], rates[(step, 2)]
        print(f"  {step:15s} 1 rank {one:6.2f} steps/s   2 ranks {two:6.2f} steps/s   ({two / one:.2f}×, "
              f"global batch 2×)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-train", action="store_true", help="Latency only.")
    ap.add_argument("--unet", action="store_true", help="Also an SD-UNet teacher against BK-SDM-style students.")
    args = ap.parse_args()
    latency(args.sizes, args.reps)
    if args.unet:
        unet_latency(args.sizes, args.reps)
    if not args.no_train:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-distill-"))
        training(work, args.steps)


if __name__ == "__main__":
    main()
