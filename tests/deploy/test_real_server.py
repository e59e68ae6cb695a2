"""Deployments that fire, on a real Prefect server (slow).

One module-scoped stack, all on loopback and all real processes: ``prefect server start`` (its own PREFECT_HOME
and sqlite under tmp), the process work pool named in prefect.yaml, ``prefect deploy --all`` run from a checkout,
and ``prefect worker start`` on that pool. Then:

- the retrain-nightly deployment carries its cron schedule and the server's scheduler has put the next nights'
  02:00 UTC runs on it; the two event deployments have the automations that ``datasets register`` reports;
- ``srcompress datasets register <folder> --for retrain`` (event ``srcompress.dataset.registered``) while the
  nightly deployment is started by hand: the triggered run and the "scheduled" run execute the whole DAG at the
  same time on the same artifact store and the same MLflow database; both complete with identical step digests
  and every object in the store verifies against its recorded sha256;
- ``srcompress datasets register <folder> --for evaluate`` (event ``srcompress.evalset.registered``): the trigger
  starts evaluate-on-new-dataset on that folder; it completes and its metrics are in MLflow.

To keep this within a few minutes on 2 CPU cores, the checkout is a copy (``git ls-files``, tracked and
untracked-but-not-ignored files) of this working tree whose ``configs/tiny.yaml`` — the config every deployment in
prefect.yaml names — is replaced by ``SMALL``: 7 photos copied from the bundled sets as the data folder, one 64 px
crop each, a 2-block tiny teacher trained for a few steps, 4 search steps (checkpointing every 2, so concurrent
runs also write checkpoints), 4 + 2 distillation steps, PSNR/SSIM only, no efficiency timing. Every step still
runs through its real machinery (Ray Data actors, DeepSpeed ranks as Ray actors, MLflow, the store). The flows'
code is the installed (editable) package. The worker's environment points the store (``SRCOMPRESS_STORE_URI``)
and MLflow (``MLFLOW_TRACKING_URI``, sqlite) at tmp, so the test can read both.

Nothing here touches this process's environment: every Prefect setting goes to the subprocesses' own
environments, and the test talks to the server through ``temporary_settings``. Every process started (server,
worker, and their descendants: flow runs, Ray) is stopped at the end, also on failure — and only those: signals
go to a process group whose leader this test has not reaped yet (so the group id is still its own), or through a
psutil handle taken while the process was a descendant of one the test started (the handle checks the start
time, so a pid reused by an unrelated process on the host is never signalled).

Each test states its own preconditions through fixtures: ``stack`` (server, pool, deployments, worker) and
``retrained`` (the scheduled and the triggered retraining, run once; the evaluation deployment scores the
champion that retraining registers). The module is one xdist group, so its tests share one stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psutil
import pytest
import yaml

from tests.conftest import free_port, wait_http

# one xdist group: under `-n 2 --dist loadgroup` the tests would otherwise be spread over two workers, each
# building its own module-scoped stack (and retraining) at twice the cost
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.xdist_group("real_server")]

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
SRCOMPRESS = [sys.executable, "-m", "srcompress.cli"]
NIGHTLY = "srcompress-compress/retrain-nightly"
RETRAIN = "srcompress-compress/retrain-on-new-dataset"
EVALUATE = "srcompress-evaluate/evaluate-on-new-dataset"
DAG_STEPS = {"degrade", "degrade_holdout", "bootstrap_teacher", "encode_latents", "analyse_redundancy",
             "search_pruning", "distill_latent", "distill_pixel", "eval_data", "evaluate"}

SMALL = {
    "run": {"name": "deploy-test", "max_workers": 2},
    "data": {"source": None, "held_out": [], "held_out_fraction": 0.1},  # source: the test's folder
    "degrade": {"preset": "seesr", "crop_size": 64, "crops_per_image": 1, "batch_size": 4, "shard_size": 3},
    "teacher": {"source": "bootstrap", "bootstrap": {"vae_steps": 4, "restorer_steps": 2, "num_layers": 2,
                                                     "batch_size": 2, "vae_crop": 32, "eval_every": 1,
                                                     "val_fraction": 0}},
    "encode": {"num_actors": 1, "dtype": "float32"},
    "redundancy": {"calibration_size": 4},
    "search": {"n": 1, "m": 2, "steps": 4, "batch_size": 2, "calibration_size": 4, "checkpoint_every": 2},
    "distill": {"train_size": 4, "checkpoint_every": 0, "stage1": {"steps": 4, "batch_size": 2},
                "stage2": {"steps": 2, "batch_size": 2}},
    "evaluate": {"models": ["bicubic", "teacher"], "metrics": ["psnr", "ssim"], "data": {"center_crop": 128},
                 "efficiency": {"enabled": False}, "grid_images": 1},
}

# Known incompatibilities of Prefect 3.8.8's server with newer libraries, named in failure messages.
HINTS = {
    "Can't evaluate bulk DML statement": "Prefect 3.8.8's scheduler cannot insert runs under SQLAlchemy >= 2.1: "
                                         "pin sqlalchemy<2.1 (pyproject.toml)",
    "'input': None": "Prefect 3.8.8's server rejects the null limit/sort its own client sends under "
                     "FastAPI >= 0.151 (422): pin fastapi<0.151 (pyproject.toml)",
}


@dataclass
class Stack:
    base: Path
    api: str
    env: dict[str, str]
    checkout: Path
    store: Path
    tracking_uri: str
    landed: Path
    evalset: Path
    server_log: Path
    worker_log: Path


def _hint(*texts: str) -> str:
    found = [hint for needle, hint in HINTS.items() if any(needle in t for t in texts)]
    return ("\n".join(found) + "\n") if found else ""


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _photos(dest: Path, names: list[str]) -> Path:
    from srcompress.tasks.common.sources import bundled_files

    dest.mkdir(parents=True)
    for name, path in bundled_files(["sklearn", "kodak"]):
        if name in names:
            shutil.copy(path, dest / name.replace("/", "_"))
    assert len(list(dest.iterdir())) == len(names)
    return dest


def _checkout(dest: Path, data: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    cfg = json.loads(json.dumps(SMALL))
    cfg["data"]["source"] = str(data)
    (dest / "configs" / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: stopped as a whole


def _descendants(procs: list[subprocess.Popen], since: float) -> list[psutil.Process]:
    """psutil handles on the live descendants of the processes this test started, taken now.

    Only a child the test has not reaped yet (``returncode is None``; an exited one stays a zombie and keeps its
    pid) is asked for its descendants, and only processes created after ``since`` (the stack's start) are kept.
    A handle remembers its process's start time: psutil refuses to signal through it once the pid belongs to
    another process, which a bare pid looked up at kill time would not."""
    found: list[psutil.Process] = []
    for p in procs:
        if p.returncode is not None:  # reaped: that pid may be anyone's now
            continue
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(p.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.create_time() >= since:
                        found.append(child)
    return found


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    """Signal the process group ``p`` leads (start_new_session: group id == its pid) while ``p`` is unreaped:
    until then the pid, and so the group id, cannot have been given to another process."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)


def _stop(procs: list[subprocess.Popen], since: float) -> None:
    """SIGTERM each process group, then SIGKILL what is left, descendants that left the group included."""
    family = _descendants(procs, since)
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + 3  # grace for a clean exit; the stack's state is a temp dir (15 s cost 15 s)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:
        _signal_group(p, signal.SIGKILL)
        p.wait()
    for proc in family:
        with contextlib.suppress(psutil.Error):  # NoSuchProcess also when the pid was reused: not ours, untouched
            proc.kill()


@contextlib.contextmanager
def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def _runs(client, deployment: str) -> list:
    """Flow runs of a deployment (every body field explicit: see HINTS)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    dep = client.read_deployment_by_name(deployment)
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=100, offset=0)


def _poll(what: str, fn, timeout: float, stack: Stack, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    server, worker = _tail(stack.server_log), _tail(stack.worker_log)
    raise AssertionError(f"{_hint(server, worker)}timed out after {timeout:.0f}s waiting for {what}\n"
                         f"--- server log ---\n{server}\n--- worker log ---\n{worker}")


def _final(stack: Stack, run_id, timeout: float):
    def done():
        with _client(stack.api) as c:
            run = c.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return _poll(f"flow run {run_id} to finish", done, timeout, stack, every=3)


def _register(stack: Stack, source: Path, purpose: str, *extra: str) -> tuple[str, str]:
    res = subprocess.run([*SRCOMPRESS, "datasets", "register", str(source), "--for", purpose, *extra],
                         env=stack.env, cwd=stack.base, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, _hint(res.stderr) + res.stdout + res.stderr
    event_id = re.search(r"^event id: (\S+)$", res.stdout, re.M).group(1)
    return event_id, res.stdout


def _event(stack: Stack, event_id: str):
    from prefect.events.filters import EventFilter, EventIDFilter

    def read():
        with _client(stack.api) as c:
            events = c.read_events(EventFilter(id=EventIDFilter(id=[UUID(event_id)])), limit=1).events
        return events[0] if events else None

    return _poll(f"event {event_id} in the server's events", read, 60, stack)


def _mlflow_parent(stack: Stack, flow_run_id):
    from mlflow import MlflowClient

    client = MlflowClient(stack.tracking_uri)
    exp = client.get_experiment_by_name("srcompress")
    runs = client.search_runs([exp.experiment_id], f"tags.`srcompress.prefect_flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1, (flow_run_id, [r.info.run_id for r in runs])
    return runs[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    base = tmp_path_factory.mktemp("deploy")
    landed = _photos(base / "landed", ["sklearn/china.jpg", "sklearn/flower.jpg", "kodak/I03.bmp", "kodak/I04.bmp",
                                       "kodak/I06.bmp", "kodak/I08.bmp", "kodak/I19.bmp"])
    evalset = _photos(base / "evalset", ["kodak/I04.bmp", "kodak/I19.bmp", "sklearn/flower.jpg"])
    checkout = _checkout(base / "checkout", landed)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "SRCOMPRESS_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(base / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false", HF_HUB_OFFLINE="1")
    store, tracking_uri = base / "store", f"sqlite:///{base / 'mlflow.db'}"
    # MLflow's schema is created before the runs, as for any shared database (`mlflow db upgrade`, or a tracking
    # server): two processes that open one fresh sqlite file at once race on MLflow's migrations, one of them
    # fails — test_shared_mlflow_db.py, a bug of infra/tracking.py, not of the deployments tested here.
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).search_experiments(max_results=1)
    worker_env = dict(env, SRCOMPRESS_CHECKOUT=str(checkout), SRCOMPRESS_STORE_URI=str(store),
                      MLFLOW_TRACKING_URI=tracking_uri, PREFECT_WORKER_QUERY_SECONDS="2")
    st = Stack(base, api, env, checkout, store, tracking_uri, landed, evalset, base / "server.log",
               base / "worker.log")
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pool = deployments[0]["work_pool"]["name"]  # the local pool; the cluster pool gets no worker here
    procs: list[subprocess.Popen] = []
    since = psutil.Process().create_time()  # nothing created before this test process can be one it started
    try:
        procs.append(_start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                            st.server_log, base))
        try:
            wait_http(api + "/health", 180)
        except TimeoutError:
            raise AssertionError("prefect server did not start:\n" + _tail(st.server_log)) from None
        for name in sorted({d["work_pool"]["name"] for d in deployments}):
            res = subprocess.run([*PREFECT, "work-pool", "create", name, "--type", "process"], env=env, cwd=base,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stdout + res.stderr
        res = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=checkout,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, _hint(res.stdout, res.stderr) + res.stdout[-4000:] + res.stderr[-4000:]
        procs.append(_start([*PREFECT, "worker", "start", "--pool", pool, "--type", "process"], worker_env,
                            st.worker_log, base))
        yield st
    finally:
        _stop(procs, since)


def test_nightly_schedule_and_event_triggers_are_deployed(stack):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from srcompress.infra.orchestration import listening_deployments

    with _client(stack.api) as c:
        dep = c.read_deployment_by_name(NIGHTLY)
    assert len(dep.schedules) == 1 and dep.schedules[0].active
    sched = dep.schedules[0].schedule
    assert isinstance(sched, CronSchedule) and (sched.cron, sched.timezone) == ("0 2 * * *", "UTC")

    def upcoming():  # the server's scheduler service turns the cron into Scheduled runs
        with _client(stack.api) as c:
            return [r for r in _runs(c, NIGHTLY) if r.state_type.value == "SCHEDULED"]

    runs = _poll("the scheduler to create the nightly runs", upcoming, 90, stack)
    assert all((r.expected_start_time.hour, r.expected_start_time.minute) == (2, 0) for r in runs)

    with temporary_settings({PREFECT_API_URL: stack.api}):
        assert listening_deployments("srcompress.dataset.registered",
                                     {"prefect.resource.id": "srcompress.dataset.x"}) == [RETRAIN]
        assert listening_deployments("srcompress.evalset.registered",
                                     {"prefect.resource.id": "srcompress.evalset.x"}) == [EVALUATE]
        assert listening_deployments("srcompress.dataset.registered",
                                     {"prefect.resource.id": "srcompress.evalset.x"}) == []


@dataclass
class Retrain:
    register_stdout: str
    event: object  # the registration event as the server stored it
    triggered: list  # the retrain-on-new-dataset runs the event created
    done: dict  # "nightly" / "triggered" → the finished flow run


@pytest.fixture(scope="module")
def retrained(stack) -> Retrain:
    """The nightly deployment started now (as its schedule would) and a dataset-triggered retrain on the same data,
    at the same time, both waited for. Shared setup, not a test: the concurrency test checks the outcome, and the
    evaluation test needs the champion that retraining registers — each asks for it instead of relying on the
    order the tests run in."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api}):
        nightly = run_deployment(NIGHTLY, timeout=0)
    event_id, out = _register(stack, stack.landed, "retrain", "--name", "landed")
    ev = _event(stack, event_id)

    def triggered():
        with _client(stack.api) as c:
            return _runs(c, RETRAIN)

    runs = _poll("the dataset trigger to create a retrain run", triggered, 60, stack)
    done = {name: _final(stack, fid, 900) for name, fid in (("nightly", nightly.id), ("triggered", runs[0].id))}
    return Retrain(out, ev, runs, done)


def test_scheduled_and_triggered_retrain_at_once_on_one_store(stack, retrained):
    """The nightly deployment started now (as its schedule would) and a dataset-triggered retrain, same data and
    config, same store and MLflow database, at the same time: both complete, same digests, nothing corrupt."""
    from srcompress.infra.manifest import Manifest
    from srcompress.infra.store import LocalStore
    from srcompress.infra.store.base import META_DIR

    out, ev, runs, done = retrained.register_stdout, retrained.event, retrained.triggered, retrained.done
    assert f"will trigger: {RETRAIN}" in out, out
    assert ev.event == "srcompress.dataset.registered" and ev.resource.id == "srcompress.dataset.landed"
    assert ev.payload["source"] == str(stack.landed)
    assert len(runs) == 1 and f"data.source={stack.landed}" in runs[0].parameters["overrides"]
    for name, run in done.items():
        assert run.state.is_completed(), (name, run.state, _tail(stack.worker_log, 6000))

    parents = {name: _mlflow_parent(stack, run.id) for name, run in done.items()}
    digests = {name: {k.split(".")[2]: v for k, v in r.data.tags.items()
                      if k.startswith("srcompress.step.") and k.endswith(".digest")} for name, r in parents.items()}
    assert DAG_STEPS <= set(digests["nightly"]), digests["nightly"]
    # the evaluation report records measured wall-clock time (seconds per image), so two evaluations differ;
    # each run's report lives under its own prefix, and every data and model digest must agree
    differ = sorted(k for k in digests["nightly"].keys() | digests["triggered"].keys()
                    if k != "evaluate" and digests["nightly"].get(k) != digests["triggered"].get(k))
    assert not differ, (f"steps whose digests differ between the two runs: {differ}", digests)
    a, b = parents["nightly"].info, parents["triggered"].info
    assert a.status == b.status == "FINISHED"
    assert a.start_time < b.end_time and b.start_time < a.end_time  # they did run at the same time

    store = LocalStore(stack.store)
    leftovers = [p for p in stack.store.rglob("*") if ".srtmp-" in p.name]
    assert not leftovers, leftovers
    # every object the steps wrote through the store API; mlflow/ is MLflow's own artifact repository (one folder
    # per MLflow run or logged model, written by MLflow, with no store records)
    objects = [rel for rel in (p.relative_to(stack.store).as_posix() for p in stack.store.rglob("*") if p.is_file())
               if not rel.startswith((META_DIR + "/", "mlflow/"))]
    corrupt = [key for key in objects if store.verify(key) is None]
    assert objects and not corrupt, corrupt
    manifests = [Manifest.from_json(store.get_bytes(info.key)) for info in store.list("cache")]
    assert {m.step for m in manifests} >= DAG_STEPS - {"degrade_holdout"}  # a holdout manifest is a "degrade" one
    for m in manifests:  # every manifest's own object is there and intact
        if m.uri.startswith(store.root_uri + "/"):
            assert store.verify(store.key_from_uri(m.uri)) is not None, m.uri


def test_registered_evalset_triggers_an_evaluation_recorded_in_mlflow(stack, retrained):
    from mlflow import MlflowClient

    # precondition, from the fixture: the deployment scores the champion, which a completed retraining registers
    assert any(run.state.is_completed() for run in retrained.done.values()), \
        ({k: r.state for k, r in retrained.done.items()}, _tail(stack.worker_log, 6000))
    MlflowClient(stack.tracking_uri).get_model_version_by_alias("srcompress-student", "champion")  # raises if none
    event_id, out = _register(stack, stack.evalset, "evaluate")
    assert f"will trigger: {EVALUATE}" in out, out
    ev = _event(stack, event_id)
    assert ev.event == "srcompress.evalset.registered" and ev.resource.id.startswith("srcompress.evalset.")
    assert ev.payload["data"] == str(stack.evalset) and ev.payload["files"] == 3

    def triggered():
        with _client(stack.api) as c:
            return _runs(c, EVALUATE)

    runs = _poll("the evalset trigger to create an evaluation run", triggered, 60, stack)
    assert len(runs) == 1 and runs[0].parameters["data"] == str(stack.evalset)
    run = _final(stack, runs[0].id, 600)
    assert run.state.is_completed(), (run.state, _tail(stack.worker_log, 6000))

    parent = _mlflow_parent(stack, run.id)
    assert parent.info.status == "FINISHED"
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["srcompress.kind"] == "evaluation" and tags["srcompress.data"] == str(stack.evalset)
    assert {"bicubic.psnr", "bicubic.ssim", "teacher.psnr", "teacher.ssim"} <= set(metrics), metrics
    # the deployment scores the model in production: the champion the retraining registered
    assert "models:/srcompress-student/alias/champion.psnr" in metrics, metrics
    assert all(v == v for v in metrics.values())  # no NaN
