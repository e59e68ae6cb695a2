"""Degradation throughput: pairs/s by batch size and crop size, and per-core scaling, measured in one run.

    .venv/bin/python bench/degrade.py [--pairs-small 64] [--pairs-large 32] [--preset seesr]

Crops come from the bundled photos (real image statistics, not noise). Each setting degrades the same pairs
(same seeds), so the ratios compare like with like. Prints a table and the ratios:
batch-32 vs batch-1, 512-px vs 128-px cost per pixel, and 2 threads vs 1 thread (the machine has 2 cores),
plus 2 worker processes × 1 thread vs 1 process (how the Prefect fan-out scales).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch

from srcompress.models.degradations import degrade_batch
from srcompress.tasks.common.ingest import decode_image
from srcompress.tasks.common.sources import bundled_files
from srcompress.tasks.degrade.config import DegradeConfig


def crops(n: int, size: int) -> torch.Tensor:
    photos = [decode_image(p.read_bytes(), 10**9).rgb for _, p in bundled_files(["skimage", "sklearn", "kodak"])]
    photos = [p for p in photos if min(p.shape[:2]) >= size]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        t = int(rng.integers(0, img.shape[0] - size + 1))
        left = int(rng.integers(0, img.shape[1] - size + 1))
        out.append(torch.from_numpy(np.ascontiguousarray(img[t:t + size, left:left + size])).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def pairs_per_s(x: torch.Tensor, cfg: DegradeConfig, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    degrade_batch(x[:1], [0], cfg)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        degrade_batch(x[i:i + batch], list(range(i, min(i + batch, len(x)))), cfg)
    return len(x) / (time.perf_counter() - t0)


def _worker(args):
    x, cfg_json, batch = args
    torch.set_num_threads(1)
    cfg = DegradeConfig.model_validate_json(cfg_json)
    for i in range(0, len(x), batch):
        degrade_batch(x[i:i + batch], list(range(i, min(i + batch, len(x)))), cfg)
    return len(x)


def processes_pairs_per_s(x: torch.Tensor, cfg: DegradeConfig, batch: int, procs: int) -> float:
    parts = [x[i::procs].clone() for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_worker, [(p[:1], cfg.model_dump_json(), 1) for p in parts])  # warm-up imports
        t0 = time.perf_counter()
        n = sum(pool.map(_worker, [(p, cfg.model_dump_json(), batch) for p in parts]))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs-small", type=int, default=64)
    ap.add_argument("--pairs-large", type=int, default=32)
    ap.add_argument("--preset", default="seesr")
    args = ap.parse_args()
    rows = []
    results: dict[tuple[int, int, int], float] = {}
    for size, n in ((128, args.pairs_small), (512, args.pairs_large)):
        cfg = DegradeConfig(preset=args.preset, crop_size=size)
        x = crops(n, size)
        for batch in (1, 8, 32):
            for threads in (1, 2):
                r = pairs_per_s(x, cfg, batch, threads)
                results[(size, batch, threads)] = r
                rows.append(f"| {size:4d} | {batch:5d} | {threads:7d} | {r:9.2f} | {r * size * size / 1e6:8.2f} |")
    cfg = DegradeConfig(preset=args.preset, crop_size=128)
    x = crops(args.pairs_small, 128)
    p1 = processes_pairs_per_s(x, cfg, 8, 1)
    p2 = processes_pairs_per_s(x, cfg, 8, 2)
    print(f"preset={args.preset}  torch={torch.__version__}  cores={torch.get_num_threads()}")
    print("| crop | batch | threads |  pairs/s | MPix/s |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nratios (measured in this run):")
    for size in (128, 512):
        print(f"  {size}px batch 32 / batch 1 (1 thread): {results[(size, 32, 1)] / results[(size, 1, 1)]:.2f}x")
        print(f"  {size}px batch 8: 2 threads / 1 thread: {results[(size, 8, 2)] / results[(size, 8, 1)]:.2f}x")
    mpix = lambda s: results[(s, 8, 1)] * s * s  # noqa: E731
    print(f"  MPix/s 512px / 128px (batch 8, 1 thread): {mpix(512) / mpix(128):.2f}x")
    print(f"  128px batch 8: 2 processes x 1 thread / 1 process: {p2 / p1:.2f}x  ({p1:.1f} -> {p2:.1f} pairs/s)")


if __name__ == "__main__":
    main()
