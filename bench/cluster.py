"""Degradation and evaluation scoring on a Ray cluster vs this process's own threads, side by side in one run.

    .venv/bin/python bench/cluster.py [--sizes 24 96 384 1560] [--eval-images 16 128] [--cpus 2]

Starts one Ray cluster (``ray start --head`` as its own process, ``--cpus`` CPUs: a cluster that is already up,
as ``run.ray_address`` joins it) and, for each size, runs the same step twice on fresh work dirs: on the
driver's thread pool (``run.max_workers`` = cpus) and as Ray tasks (``run.ray_address``). Reports each step's
own wall time (its MLflow ``seconds`` / manifest ``seconds``: scan + shards + index for degradation, loading +
scoring + report for evaluation; Prefect and MLflow start-up excluded) and the ratio local / cluster, so the
size at which the cluster's per-task start-up is amortised can be read off. Digests (degradation) and scores
(evaluation) are checked equal between the two. Numbers depend on the machine: on 2 cores the cluster can at
best match the thread pool; on a real cluster the ratio scales with its nodes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def degrade_seconds(out: dict) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    runs = client.search_runs([out["experiment_id"]], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    return next(r for r in runs if r.info.run_name == "degrade").data.metrics["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[24, 96, 384, 1560], help="Degraded pairs per run.")
    ap.add_argument("--eval-images", type=int, nargs="*", default=[16, 128], help="Evaluation images per run.")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    from srcompress.infra.orchestration import configure_prefect

    configure_prefect(work)
    from PIL import Image

    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline
    from srcompress.flows.evaluate import run_evaluation
    from srcompress.tasks.common.sources import bundled_files

    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                    "--num-cpus", str(args.cpus), "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=180)
    cluster = [f"run.ray_address=127.0.0.1:{port}", "run.shared_filesystem=true"]
    try:
        files = bundled_files(["skimage", "sklearn", "kodak"])
        print(f"degradation ({len(files)} photos, 128-px crops, 8 pairs per shard), {args.cpus} CPUs:")
        for size in args.sizes:
            per = max(1, -(-size // len(files)))
            base = ["data.held_out=[]", "degrade.crop_size=128", f"degrade.crops_per_image={per}",
                    "degrade.shard_size=8", f"run.max_workers={args.cpus}"]
            t, digests = {}, {}
            for mode, extra in (("local", []), ("cluster", cluster)):
                out = run_pipeline(load_config("tiny", base + extra), work / f"d-{size}-{mode}", until="degrade")
                t[mode], digests[mode] = degrade_seconds(out), out["steps"]["degrade"]["digest"]
                n = out["steps"]["degrade"]["counts"]["pairs"]
            assert digests["local"] == digests["cluster"]
            print(f"  {n:5d} pairs: local {t['local']:6.1f} s ({n / t['local']:6.1f} pairs/s)   cluster "
                  f"{t['cluster']:6.1f} s ({n / t['cluster']:6.1f} pairs/s)   cluster/local throughput "
                  f"{t['local'] / t['cluster']:.2f}x")

        photos = work / "photos"
        photos.mkdir()
        print("evaluation scoring (bicubic + tiny teacher, psnr/ssim/st_lpips/piqe, 128-px centre crops, "
              "4 images per Ray task):")
        teacher_base = ["data.bundled_sets=[sklearn]", "data.held_out=[]", "degrade.crop_size=64",
                        "degrade.crops_per_image=2", "teacher.bootstrap.restorer_steps=20"]
        for n in args.eval_images:
            shutil.rmtree(photos)
            photos.mkdir()
            for i in range(n):
                name, path = files[i % len(files)]
                im = Image.open(path).convert("RGB")
                dx = 4 * (i // len(files))  # shifted copies: distinct content (the eval set drops duplicates)
                im.crop((dx, 0, im.width, im.height)).save(photos / f"{i:04d}-{Path(name).stem}.png")
            ev = ["evaluate.models=[bicubic, teacher]", "evaluate.metrics=[psnr, ssim, st_lpips, piqe]",
                  "evaluate.efficiency.enabled=false", "evaluate.data.center_crop=128", "evaluate.items_per_task=4",
                  "evaluate.grid_images=0"]
            t, scores = {}, {}
            for mode, extra in (("local", []), ("cluster", cluster)):
                res = run_evaluation(load_config("tiny", teacher_base + ev + extra), work / f"e-{mode}", str(photos))
                t[mode] = res["steps"]["evaluate"]["extra"]["seconds"]
                scores[mode] = {k: v for k, v in res["metrics"].items() if "seconds" not in k}
            worst = max(abs(scores["local"][k] - v) / max(1e-9, abs(v)) for k, v in scores["cluster"].items())
            print(f"  {n:5d} images: local {t['local']:6.1f} s   cluster {t['cluster']:6.1f} s   cluster/local "
                  f"throughput {t['local'] / t['cluster']:.2f}x   (scores equal to {worst:.1e} relative)")
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
