"""Evaluation throughput: images/s per metric on 512-px images, ours vs pyiqa where both exist, and the
latency overhead of latent tiling (tile 64 / overlap 8 → 9 tiles vs untiled) for the tiny SD3 and UNet teachers.

    .venv/bin/python bench/evaluate.py [--images 4] [--reps 3]

Inputs are pre-loaded tensors (no I/O); one warm-up image per metric; torch threads are printed. Metrics
whose weights are not on this machine are listed as unavailable.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from srcompress.infra.assets import AssetUnavailable, niqe_params_path
from srcompress.models.iqa import MetricEnv, MetricUnavailable, build_metric, metric_names
from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher
from srcompress.models.upscalers import DiffusionSR
from srcompress.tasks.common.sources import bundled_files


def photos(n: int, size: int = 512) -> list[torch.Tensor]:
    out = []
    for _, path in bundled_files(["skimage", "kodak", "sklearn"])[:n]:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255)
    return out


def degrade(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def metric_rates(hqs: list[torch.Tensor], env: MetricEnv) -> dict[str, tuple[float, str]]:
    srs = [degrade(h, i) for i, h in enumerate(hqs)]
    rates: dict[str, tuple[float, str]] = {}
    for name in metric_names():
        try:
            m = build_metric(name, env)
        except MetricUnavailable as exc:
            rates[name] = (float("nan"), str(exc))
            continue
        if m.info.mode == "DIST":
            m.update(srs[0], hqs[0])  # warm-up
            m.reset()
            t0 = time.perf_counter()
            for s, h in zip(srs, hqs):
                m.update(s, h)
            m.compute()
        else:
            m.score(srs[0], hqs[0] if m.info.mode == "FR" else None)
            t0 = time.perf_counter()
            for s, h in zip(srs, hqs):
                m.score(s, h if m.info.mode == "FR" else None)
        rates[name] = (len(hqs) / (time.perf_counter() - t0), m.info.backend)
    return rates


@torch.no_grad()
def tiling_overhead(reps: int) -> list[tuple[str, float, float, float]]:
    rows = []
    lr = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # → 512 px SR
    for name, teacher in (("tiny-sd3", tiny_sd3_teacher().eval()), ("tiny-unet", tiny_unet_teacher().eval())):
        whole = DiffusionSR(teacher, tile=None)
        tiled = DiffusionSR(teacher, tile=64, tile_overlap=8)
        def t(up):
            up(lr)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                up(lr)
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1000
        a, b = t(whole), t(tiled)
        rows.append((name, a, b, float((whole(lr) - tiled(lr)).abs().mean())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    try:
        niqe = niqe_params_path()
    except AssetUnavailable:
        niqe = None
    print(f"torch threads: {torch.get_num_threads()}; {args.images} images of 512x512")
    rates = metric_rates(photos(args.images), MetricEnv(niqe_params=niqe))
    print(f"{'metric':12s} {'images/s':>9s}  backend / status")
    for name, (rate, info) in sorted(rates.items()):
        print(f"{name:12s} {rate:9.2f}  {info}" if rate == rate else f"{name:12s} {'-':>9s}  {info}")
    for ours, theirs in (("psnr", "psnr_pyiqa"), ("ssim", "ssim_pyiqa"), ("niqe", "niqe_pyiqa")):
        if rates[ours][0] == rates[ours][0] and rates[theirs][0] == rates[theirs][0]:
            print(f"speed ratio {ours} (ours, float64) / {theirs}: {rates[ours][0] / rates[theirs][0]:.2f}x")
    print("\nlatent tiling at 512 px SR = 128 latents (tile 64 / overlap 8 → 3x3 tiles, vs untiled):")
    for name, a, b, diff in tiling_overhead(args.reps):
        print(f"{name:10s} untiled {a:8.1f} ms  tiled {b:8.1f} ms  overhead {b / a:5.2f}x  mean |diff| {diff:.4f}")


if __name__ == "__main__":
    main()
