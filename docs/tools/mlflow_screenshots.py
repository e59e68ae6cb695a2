"""Render screenshots of the MLflow UI for the README's lineage section (run by hand, not in CI).

    .venv/bin/python docs/tools/mlflow_screenshots.py [--workdir runs/tiny] [--out docs/img] [--model srcompress-student]

Needs Debian's ``chromium`` (``apt install chromium``). Starts ``mlflow server`` on the main job's database
(``<workdir>/mlflow.db``, artifacts served from the run's store) on a free loopback port, then has headless
Chromium capture: the experiment's runs (the pipeline run with its nested step runs), the latest pipeline
run, and the registered model version with its lineage tags.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def shoot(browser: str, url: str, path: Path) -> None:
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1600,1000", "--virtual-time-budget=8000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--model", default="srcompress-student")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs chromium (Debian: apt install chromium)")
    db = (args.workdir / "mlflow.db").resolve()
    if not db.is_file():
        sys.exit(f"no {db}: run `srcompress run --config configs/tiny.yaml` first")
    from mlflow import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("srcompress")
    runs = client.search_runs([exp.experiment_id], "tags.`srcompress.kind` = 'pipeline'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    version = client.get_model_version_by_alias(args.model, "candidate")
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait(f"{base}/health")
        args.out.mkdir(parents=True, exist_ok=True)
        shoot(browser, f"{base}/#/experiments/{exp.experiment_id}/runs", args.out / "mlflow-runs.png")
        if runs:
            shoot(browser, f"{base}/#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}",
                  args.out / "mlflow-pipeline-run.png")
        shoot(browser, f"{base}/#/models/{args.model}/versions/{version.version}", args.out / "mlflow-model-version.png")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
