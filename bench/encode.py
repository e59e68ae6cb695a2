"""Latent pre-encoding throughput: the Ray Data step vs a plain torch loop, and 1 vs 2 actors, in one run.

    .venv/bin/python bench/encode.py [--pairs 96] [--crop 128]

Builds a pairs set from the bundled photos (the real degrade step), a tiny SD3 teacher (random weights: speed
does not depend on training), then times: (a) a plain single-process torch loop over the same shards
(threads = cores), (b) the encode step's Ray actor pool with 1 actor, (c) with 2 actors (1 thread each).
Prints latents/s, the ratios, and peak RSS of the driver and of the whole process tree.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--crop", type=int, default=128)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    from srcompress.infra.orchestration import configure_prefect

    configure_prefect(work)
    import torch

    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline
    from srcompress.infra.context import RunContext
    from srcompress.infra.manifest import Manifest
    from srcompress.models.teachers import save_teacher
    from srcompress.models.teachers.tiny import tiny_sd3_teacher
    from srcompress.tasks.degrade.reader import iter_pairs
    from srcompress.tasks.encode.config import EncodeConfig
    from srcompress.tasks.encode.worker import encode_pairs

    teacher_dir = save_teacher(tiny_sd3_teacher(seed=0, num_layers=8, heads=2, head_dim=16, vae_channels=(16, 32)),
                               work / "teacher")
    per_image = max(1, args.pairs // 12)
    base = ["data.bundled_sets=[skimage, sklearn, kodak]", f"degrade.crop_size={args.crop}",
            f"degrade.crops_per_image={per_image}", "degrade.shard_size=8", f"teacher.source={teacher_dir}"]
    out = run_pipeline(load_config("tiny", base + ["data.held_out=[]"]), work / "w0", until="bootstrap_teacher")
    pairs = Manifest.model_validate(out["steps"]["degrade"])
    ctx = RunContext(workdir=str(work / "w0"), store=load_config("tiny").store, tracking=load_config("tiny").tracking)
    store = ctx.get_store()
    from srcompress.models.teachers import load_teacher

    teacher = load_teacher(teacher_dir)
    n = pairs.counts["pairs"]
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, lq, hq, meta in iter_pairs(store, pairs):
            encode_pairs(teacher, lq, hq, meta, EncodeConfig())
    plain = n / (time.perf_counter() - t0)

    results = {}
    for actors in (1, 2):
        wd = work / f"w{actors}"
        shutil.copytree(work / "w0" / "store", wd / "store", dirs_exist_ok=True)
        # drop cached latents so the actors really encode
        shutil.rmtree(wd / "store" / "encode", ignore_errors=True)
        shutil.rmtree(wd / "store" / "cache" / "encode_latents", ignore_errors=True)
        cfg = load_config("tiny", base + ["data.held_out=[]", f"encode.num_actors={actors}"])
        t0 = time.perf_counter()
        run_pipeline(cfg, wd, until="encode_latents")
        wall = time.perf_counter() - t0
        results[actors] = n / wall
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"pairs={n} crop={args.crop} latent={args.crop // teacher.latent_factor}px torch={torch.__version__} cores={os.cpu_count()}")
    print("| path | latents/s |\n|---|---|")
    print(f"| plain torch loop (1 process, {os.cpu_count()} threads) | {plain:.2f} |")
    for a, r in results.items():
        print(f"| Ray Data step, {a} actor(s) x 1 thread (incl. Ray start + flow overhead) | {r:.2f} |")
    print(f"\nratios: Ray 2 actors / plain loop = {results[2] / plain:.2f}x; Ray 2 actors / 1 actor = {results[2] / results[1]:.2f}x")
    print(f"peak RSS: driver {peak_self:.0f} MiB, largest child process {peak_children:.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
