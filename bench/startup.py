"""Start-up of `srcompress run`: a fully cached `--until degrade` rerun against the real one, with a breakdown.

    .venv/bin/python bench/startup.py [--reruns 3]

Runs the embedded default's degrade step once in a fresh work dir, then reruns it fully cached (each run a fresh
CLI process, as a user types it) and times the pieces a rerun pays in fresh interpreters: importing the flow
module (Prefect's client included), MLflow's client, Prefect's server module (imported only by the local API's
own process since the CLI hands its URL to the client) and torch + diffusers (which a cached rerun must not
import). Ends with ``RESULT cached_s=… first_s=… ratio=… import_flow_s=… import_mlflow_s=…``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "srcompress")]  # the console script, as a user runs it


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _import_seconds(stmt: str) -> float:
    """Wall time of ``stmt`` in a fresh interpreter, less the interpreter's own start (median of 3)."""
    base = statistics.median(_timed([sys.executable, "-c", "pass"]) for _ in range(3))
    return statistics.median(_timed([sys.executable, "-c", stmt]) for _ in range(3)) - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="srcompress-startup-") as tmp:
        run = CLI + ["run", "--config", "tiny", "--workdir", tmp, "--until", "degrade"]
        first = _timed(run)
        cached = [_timed(run) for _ in range(args.reruns)]
    parts = {"import_flow": "import srcompress.flows.compress",
             "import_mlflow": "import mlflow.tracking",
             "import_prefect_server": "import prefect.server.api.server",
             "import_torch_diffusers": "import torch, diffusers"}
    secs = {k: _import_seconds(v) for k, v in parts.items()}
    med = statistics.median(cached)
    print(f"first run (degrade computed):      {first:6.1f} s")
    print(f"fully cached reruns:               {', '.join(f'{c:.1f}' for c in cached)} s (median {med:.1f})")
    for k, v in secs.items():
        print(f"  {k.replace('_', ' '):32s} {v:5.1f} s{'   (not on the cached path)' if k == 'import_torch_diffusers' else ''}")
    print("  (Prefect's server module loads only in the local API's own process, overlapped with the CLI's imports)")
    print(f"RESULT cached_s={med:.2f} first_s={first:.2f} ratio={med / first:.3f} "
          + " ".join(f"{k}_s={v:.2f}" for k, v in secs.items()))


if __name__ == "__main__":
    main()
