"""Shared fixtures: real services on loopback, started once per session.

- ``moto_server``: moto's ThreadedMotoServer, a real S3-speaking HTTP endpoint on 127.0.0.1.
- ``mlflow_server``: a real ``mlflow server`` process (sqlite backend) proxying artifacts to that S3 server.
- ``prefect_harness``: Prefect's test harness (temporary API server + sqlite), entered once (~11 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

# Prefect reads settings at import: point it at a throwaway home before anything imports it.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="srcompress-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# The code-version memo (infra/codever.py) of the suite's processes stays in the session's home, not the user's.
os.environ.setdefault("SRCOMPRESS_CACHE_DIR", str(_SESSION_HOME / "cache"))
# Bytecode: README line 2 installs with --no-compile and some hosts (this CI's among them) export
# PYTHONDONTWRITEBYTECODE=1. Together no process ever finds a .pyc, and every Ray worker, DeepSpeed rank and CLI
# run the suite starts recompiles torch, diffusers, ray, deepspeed ... from source: importing diffusers with its
# SD3 transformer took 22 s instead of 10 s (measured on a clean clone). The suite's processes write bytecode, so
# each module is compiled once, by its first importer.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# Fake credentials for the loopback S3 server only.
for key, value in {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
                   "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ[key] = value
os.environ.pop("AWS_PROFILE", None)
# Two xdist workers share the cores: each worker's processes (the test itself, CLI runs, Ray actors, DeepSpeed
# ranks) get cores // workers torch threads (tasks/common/threads.py: core_budget reads OMP_NUM_THREADS), so
# two tests never run twice as many compute threads as there are cores (measured: 2-3x slower that way).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen (released one by one, the OS
    may hand out the same port twice — seen as a Ray node refusing two components on one port)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/moto-api/", 30)
    yield url
    server.stop()


@pytest.fixture()
def s3_bucket(moto_server):
    """A fresh bucket on the loopback S3 server; returns (endpoint_url, bucket)."""
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return moto_server, bucket


@pytest.fixture(scope="session")
def mlflow_server(moto_server, tmp_path_factory):
    """A real MLflow tracking server whose artifacts are proxied to the loopback S3 server."""
    import boto3

    bucket = "mlflow-artifacts"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    # no job runner: MLflow 3's server otherwise starts a dozen huey consumer processes the tests never use
    env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=moto_server, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
           f"s3://{bucket}/proxied", "--workers", "1"]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 120)
    except TimeoutError:
        proc.kill()
        raise RuntimeError((root / "server.log").read_text()[-3000:])
    yield {"url": url, "bucket": bucket, "endpoint": moto_server}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def module_ray():
    """One local Ray, started by this test process, for all of a module's DAG runs: their Ray steps join it
    (``ray_session``'s join branch, as under ``run.ray_address``) instead of each run starting and stopping a
    cluster of its own (~4 s on 2 cores, twice that on a loaded host). Only for modules none of whose tests
    needs Ray down in this process (a private cluster, ``run.ray_address``, the start-and-stop path itself)."""
    from srcompress.infra.ray_cluster import ray_session

    with ray_session(None):
        yield


@pytest.fixture(scope="session")
def upstream_store(tmp_path_factory, prefect_harness) -> Path:
    """The store of one upstream run (tests/upstream.py), computed once per test session — once for all
    pytest-xdist workers, who share the base temp folder's parent and take turns through a file lock."""
    return _upstream(tmp_path_factory)[0] / "store"


@pytest.fixture(scope="session")
def upstream_summary(tmp_path_factory, prefect_harness) -> dict:
    """The session upstream run's summary (``run_pipeline``'s return value): its manifests, MLflow runs
    (``tracking_uri``) and store — to be read, never written to (other tests seed copies of it)."""
    return json.loads(_upstream(tmp_path_factory)[1].read_text())


def _upstream(tmp_path_factory) -> tuple[Path, Path]:
    from filelock import FileLock

    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline
    from tests.upstream import UPSTREAM

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    work, done = shared / "upstream" / "w", shared / "upstream" / "summary.json"
    with FileLock(str(shared / "upstream.lock")):
        if not done.exists():
            shutil.rmtree(work, ignore_errors=True)  # a half-built template from an interrupted worker
            run_pipeline(load_config("tiny", UPSTREAM), work, until="analyse_redundancy", summary=done)
    return work, done


@pytest.fixture()
def upstream_workdir(tmp_path, upstream_store) -> Path:
    """``tmp_path / "w"``, its store already holding the session upstream (every upstream step a cache hit)."""
    from tests.upstream import seed_workdir

    return seed_workdir(upstream_store, tmp_path / "w")


# Scheduling: with two xdist workers the suite's wall time is set by its longest units (an xdist group runs on
# one worker, as one unit), so they start first — longest processing time first. Each test's last measured
# seconds live in tests/durations.json, written by the suite itself (SRCOMPRESS_RECORD_DURATIONS=1); a test
# not in it yet counts as a typical slow or fast test. pyproject.toml passes --no-loadscope-reorder so that
# xdist keeps this order instead of ordering groups by their number of tests.
DURATIONS = Path(__file__).parent / "durations.json"
_UNKNOWN_S = {True: 60.0, False: 1.0}  # slow / not slow
_measured: dict[str, float] = {}


def _plain_id(nodeid: str) -> str:
    return nodeid.split("@", 1)[0]  # xdist's loadgroup appends "@<group>"


def _unit(item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return f"group:{mark.args[0] if mark.args else mark.kwargs.get('name')}" if mark else _plain_id(item.nodeid)


def pytest_collection_modifyitems(config, items):
    """Units (xdist groups, else single tests) longest first by their recorded seconds; the order is the same
    on every worker, as xdist requires."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    cost: dict[str, float] = {}
    for item in items:
        seconds = known.get(_plain_id(item.nodeid), _UNKNOWN_S[item.get_closest_marker("slow") is not None])
        cost[_unit(item)] = cost.get(_unit(item), 0.0) + seconds
    items.sort(key=lambda item: -cost[_unit(item)])


def pytest_runtest_logreport(report):
    _measured[_plain_id(report.nodeid)] = _measured.get(_plain_id(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    """With SRCOMPRESS_RECORD_DURATIONS=1, a whole passing run rewrites tests/durations.json (the controller
    sees every worker's reports)."""
    if os.environ.get("SRCOMPRESS_RECORD_DURATIONS") == "1" and exitstatus == 0 and \
            not os.environ.get("PYTEST_XDIST_WORKER") and _measured:
        DURATIONS.write_text(json.dumps({k: round(v, 1) for k, v in sorted(_measured.items())}, indent=0) + "\n")


@pytest.fixture(scope="session")
def two_stage(upstream_store, tmp_path_factory, prefect_harness):
    """One uninterrupted run through ``distill_pixel`` (tests/tasks/test_distill.py's ``TWO_STAGE``) on the
    session upstream: (config, work dir, summary, the run's ``ray.init`` addresses). Shared by the distillation,
    registry, corruption and golden-curve tests (all in xdist group ``distill_two_stage``, so one worker builds
    it); the registry and corruption runs start from a copy of its store, search and both stages cache hits."""
    import ray

    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline
    from tests.tasks.test_distill import TWO_STAGE
    from tests.upstream import seed_workdir

    cfg = load_config("tiny", TWO_STAGE)
    work = seed_workdir(upstream_store, tmp_path_factory.mktemp("two-stage") / "w")
    with pytest.MonkeyPatch.context() as mp:  # count the Ray starts of the run (one: the flow keeps it)
        starts: list[str] = []
        real_init = ray.init
        mp.setattr(ray, "init", lambda *a, **kw: starts.append(kw.get("address")) or real_init(*a, **kw))
        out = run_pipeline(cfg, work, until="distill_pixel")
    return cfg, work, out, starts
