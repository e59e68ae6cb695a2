"""Render screenshots of the MLflow UI for the README's lineage section (run by hand, not in CI).

    .venv/bin/python docs/tools/mlflow_screenshots.py [--workdir runs/tiny] [--out docs/img] [--model srcompress-student]

Needs Debian's ``chromium`` (``apt install chromium``) and the ``websockets`` package (already in the venv, it comes
with uvicorn). Point ``--workdir`` at a *copy* of a finished main job's work dir: the MLflow server may migrate its
database. Starts ``mlflow server`` on ``<workdir>/mlflow.db`` on a free loopback port, then drives headless Chromium
over the DevTools protocol (so it can wait until a page has really rendered instead of guessing a time budget) and
captures:

* ``mlflow-runs.png``: the experiment's runs, the pipeline run expanded to show its nested step runs;
* ``mlflow-pipeline-run.png``: the latest pipeline run's overview page (child runs, ``srcompress.*`` tags);
* ``mlflow-model-version.png``: the registered model version (aliases, description) with its ``lineage.*`` tags.

The UI is put in "Model training" mode with the MLflow Assistant panel closed (MLflow 3 opens it on a local server's
first visit); PNGs are written palette-quantized to keep them small.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

WIDTH = 1600
# Hide MLflow Assistant's floating button; let the model version's tag table grow and give the values room.
CSS = """
[data-assistant-ui="true"] { display: none !important; }
.editable-table .du-bois-light-table-body { max-height: 572px !important; }
.editable-table col:nth-child(1) { width: 380px !important; }
.editable-table col:nth-child(2) { width: 860px !important; }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


class Chromium:
    """Just enough of the DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, binary: str, local_storage: dict[str, str]) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="mlflow-shots-")
        self.proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                      "--no-first-run", "--no-default-browser-check", "--force-device-scale-factor=1",
                                      f"--window-size={WIDTH},1000", "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(self.profile, "DevToolsActivePort")
            deadline = time.monotonic() + 30
            while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("chromium did not start its DevTools endpoint")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            self.seq = 0
            self.call("Page.enable")
            # Runs before the app's own scripts on every navigation: seed the UI state it keeps in localStorage.
            seed = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in local_storage.items())
            self.call("Page.addScriptToEvaluateOnNewDocument", source=f"try {{ {seed} }} catch (e) {{}}")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params):
        self.seq += 1
        self.ws.send(json.dumps({"id": self.seq, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.seq:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr[:80]}...: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def shoot(self, url: str, path: Path, ready: str, height: int = 1000, prepare: str = "", timeout: float = 60) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        # Ready = the page's own content is there and nothing is spinning; checked twice, a second apart.
        check = (f"(() => {{ try {{ return Boolean({ready}) && !document.querySelector("
                 "'.du-bois-light-spin-spinning, [role=progressbar], [data-testid*=spinner i], [class*=skeleton i]'); "
                 "} catch (e) { return false; } })()")
        deadline, streak = time.monotonic() + timeout, 0
        while streak < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never became ready ({ready})")
            time.sleep(1)
            streak = streak + 1 if self.js(check) else 0
        self.js(f"(() => {{ const s = document.createElement('style'); s.textContent = {json.dumps(CSS)}; "
                "document.head.appendChild(s); })()")
        if prepare:
            self.js(prepare)
        time.sleep(1.5)
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        save_small(png, path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(10)
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def stop(server: subprocess.Popen) -> None:
    """``mlflow server`` runs uvicorn workers and a job runner with its own children: end its whole process group."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            server.poll()
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def save_small(png: bytes, path: Path) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--model", default="srcompress-student")
    ap.add_argument("--alias", default="candidate", help="model version alias to show (default: candidate)")
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
    if exp is None:
        sys.exit(f"no experiment 'srcompress' in {db}")
    runs = client.search_runs([exp.experiment_id], "tags.`srcompress.kind` = 'pipeline'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    if not runs:
        sys.exit(f"no pipeline run in {db}")
    pipeline = runs[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")
    version = client.get_model_version_by_alias(args.model, args.alias)
    exp_id, run_id = exp.experiment_id, pipeline.info.run_id

    port = free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    chromium = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait(f"{base}/health")
        args.out.mkdir(parents=True, exist_ok=True)
        state_key = f'MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([exp_id])}-ReactComponentState'
        chromium = Chromium(browser, {
            "mlflow.workflowType_v1": json.dumps("machine_learning"),  # "Model training", not the GenAI pages
            "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",  # don't pop the assistant panel open
            "mlflow.assistant.panelOpen_v1": "false",
            state_key: json.dumps({"runsExpanded": {run_id: True}}),  # pipeline run expanded to its step runs
        })
        ml = "?workflowType=machine_learning"
        names = json.dumps([pipeline.info.run_name] + [c.info.run_name for c in children])
        chromium.shoot(f"{base}/#/experiments/{exp_id}/runs{ml}", args.out / "mlflow-runs.png", height=720,
                       ready=f"{names}.every(n => [...document.querySelectorAll('[role=gridcell] a')]"
                             ".some(a => a.textContent.trim() === n))")
        chromium.shoot(f"{base}/#/experiments/{exp_id}/runs/{run_id}{ml}", args.out / "mlflow-pipeline-run.png",
                       ready=f"document.body.innerText.includes('Child runs') && document.body.innerText.includes("
                             f"{json.dumps(run_id)}) && document.body.innerText.includes('srcompress.kind')")
        # The version's tags sort gate.*, lineage.*, ...: scroll the table to the run-level lineage tags followed by
        # the first step's full record (code_version, config_hash, digest, inputs, kind, object_sha256, run_id, uri).
        chromium.shoot(f"{base}/#/models/{args.model}/versions/{version.version}", args.out / "mlflow-model-version.png",
                       height=1080, ready="document.querySelector('tr[data-row-key^=\"lineage.\"]')",
                       prepare="(() => { const row = document.querySelector('tr[data-row-key=\"lineage.config_hash\"]')"
                               " || document.querySelector('tr[data-row-key^=\"lineage.\"]');"
                               " row.closest('.du-bois-light-table-body').scrollTop = row.offsetTop; })()")
    finally:
        if chromium is not None:
            chromium.close()
        stop(server)


if __name__ == "__main__":
    main()
