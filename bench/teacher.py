"""Teacher latency per image: VAE encode, one-step restore, VAE decode — tiny SD3 and tiny UNet teachers.

    .venv/bin/python bench/teacher.py [--sizes 128 256] [--reps 10]

Warm-up, then the median of ``reps`` timed calls with inputs pre-loaded (no I/O), torch threads recorded.
Prints per-stage milliseconds and the ratio of the SD3 teacher to the UNet teacher at each size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.no_grad()
def profile(teacher, size: int, reps: int) -> dict[str, float]:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    z = teacher.encode(x)
    return {"encode": median_ms(lambda: teacher.encode(x), reps),
            "restore": median_ms(lambda: teacher.restore_latent(z), reps),
            "decode": median_ms(lambda: teacher.decode(z), reps),
            "total": median_ms(lambda: teacher(x), reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    teachers = {"sd3 tiny (8 blocks, VAE x2, untiled)": tiny_sd3_teacher(num_layers=8, heads=2, head_dim=16,
                                                                           vae_channels=(16, 32)).eval(),
                "unet tiny (OSEDiff shape)": tiny_unet_teacher().eval(),
                # the embedded default's teacher: identity VAE (latent = pixels), patch 4, 32-latent tiles
                "sd3 bootstrap (8 blocks, identity VAE, tiles 32/16)": tiny_sd3_teacher(
                    num_layers=8, heads=2, head_dim=16, vae_channels=(32,), vae_norm_groups=1, vae_identity=True,
                    patch_size=4, tile=32, tile_overlap=16).eval()}
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} batch=1, median of {args.reps}")
    print("| teacher | px | encode ms | restore ms | decode ms | total ms |\n|---|---|---|---|---|---|")
    res = {}
    for name, t in teachers.items():
        for s in args.sizes:
            r = profile(t, s, args.reps)
            res[(name, s)] = r
            print(f"| {name} | {s} | {r['encode']:.1f} | {r['restore']:.1f} | {r['decode']:.1f} | {r['total']:.1f} |")
    names = list(teachers)
    for s in args.sizes:
        print(f"ratio sd3/unet total at {s}px: {res[(names[0], s)]['total'] / res[(names[1], s)]['total']:.2f}x; "
              f"bootstrap teacher / unet: {res[(names[2], s)]['total'] / res[(names[1], s)]['total']:.2f}x")


if __name__ == "__main__":
    main()
