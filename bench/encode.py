"""Latent pre-encoding throughput: the Ray Data step vs a plain torch loop, and 1 vs 2 actors, in one run.

    .venv/bin/python bench/encode.py [--pairs 96] [--crop 128]

Builds a pairs set from the bundled photos (the real degrade step), a tiny SD3 teacher (random weights: speed
does not depend on training), then times: (a) a plain single-process torch loop over the same shards
(threads = cores; reads the pairs and writes the latent shards to the store, as the actors do), (b) the encode step's Ray actor pool with 1 actor, (c) with 2 actors (1 thread each).
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
    ap.add_argument("--pairs", type=int, default=240)
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
    from srcompress.tasks.common.pairs import iter_pairs
    from srcompress.tasks.encode.config import EncodeConfig
    from srcompress.tasks.encode.worker import encode_pairs, write_latent_shard

    teacher_dir = save_teacher(tiny_sd3_teacher(seed=0, num_layers=8, heads=2, head_dim=16, vae_channels=(16, 32)),
                               work / "teacher")
    per_image = max(1, args.pairs // 15)
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
    with torch.no_grad():  # same work as an actor: read shard, encode, write the latent shard to the store
        for ref, lq, hq, meta in iter_pairs(store, pairs):
            tmp = work / "plain.safetensors"
            write_latent_shard(tmp, encode_pairs(teacher, lq, hq, meta, EncodeConfig()), meta, {})
            store.put_file(f"bench/plain/{ref.index}.safetensors", tmp)
    plain = n / (time.perf_counter() - t0)

    # Steady state: one Ray cluster for both runs; time = actor start (teacher load) + encoding all shards.
    from srcompress.infra.ray_cluster import ray_session
    from srcompress.tasks.common.pairs import shard_refs
    from srcompress.tasks.encode.step import encode_dataset, step_code_version

    teacher_m = Manifest.model_validate(out["steps"]["bootstrap_teacher"])
    refs = shard_refs(store, pairs)
    results = {}
    t_ray = time.perf_counter()
    with ray_session(None, num_cpus=os.cpu_count()):
        ray_start = time.perf_counter() - t_ray
        for actors in (1, 2):
            shutil.rmtree(work / "w0" / "store" / "encode", ignore_errors=True)
            shutil.rmtree(work / "w0" / "store" / ".srmeta" / "encode", ignore_errors=True)
            cfg = EncodeConfig(num_actors=actors, seed=actors)  # different seed → different keys: no reuse
            t0 = time.perf_counter()
            rows = encode_dataset(ctx, cfg, load_config("tiny").teacher, refs, teacher_m, step_code_version()).take_all()
            results[actors] = sum(int(r["count"]) for r in rows) / (time.perf_counter() - t0)
            assert all(bool(r["computed"]) for r in rows)
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"pairs={n} crop={args.crop} latent={args.crop // teacher.latent_factor}px torch={torch.__version__} cores={os.cpu_count()}")
    print("| path | latents/s |\n|---|---|")
    print(f"| plain torch loop (1 process, {os.cpu_count()} threads) | {plain:.2f} |")
    for a, r in results.items():
        print(f"| Ray Data actor pool, {a} actor(s) x 1 thread (incl. actor start, excl. cluster start) | {r:.2f} |")
    print(f"(local Ray cluster start: {ray_start:.1f} s, paid once per step run)")
    print(f"\nratios: Ray 2 actors / plain loop = {results[2] / plain:.2f}x; Ray 2 actors / 1 actor = {results[2] / results[1]:.2f}x")
    print(f"peak RSS: driver {peak_self:.0f} MiB, largest child process {peak_children:.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
