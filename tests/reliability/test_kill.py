"""kill -9 during the long steps of each kind (bootstrap_teacher: a training loop with checkpoints;
encode_latents: Ray Data actors over shards): the rerun completes, redoes only what was unfinished, ends with the
digests of an uninterrupted run in every step, the search and both distillation stages after the last kill point
included; no process of a killed run is alive 30 s later; its MLflow runs are marked KILLED and its Prefect flow
runs Crashed.

A third kill point in evaluate (after the students) was dropped for time (one CLI run, ~30 s on 2 cores): it
exercised the same resume path (cache hits for every finished step) and the same KILLED/Crashed bookkeeping.

degrade resumes shard by shard like encode_latents; its own interruption mid-step (the store's endpoint
stopped, the run failing) and shard-level resume are tests/reliability/test_s3_stopped.py's."""

from __future__ import annotations

import json
import queue
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from tests.reliability.conftest import STALL_S, cli_env, run_cli, start_cli
from tests.upstream import FAST_TEACHER

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# Small enough that the three CLI runs are mostly start-up, large enough that every kill lands mid-step: 28 pairs in
# 14 shards of 2 (encode has shards left after its kill point; one encode actor), a 2-layer teacher trained
# for 50 restorer steps with a checkpoint every 5 (killed at 30: 20 steps, the validation and the publication
# left), psnr/ssim on one 128-px evaluation crop, a few search and distillation steps after the last kill point.
CFG = ["data.bundled_sets=[skimage, sklearn, kodak]", "data.held_out=[kodak/I04.bmp]", "degrade.crop_size=64",
       "degrade.crops_per_image=2", "degrade.shard_size=2", "degrade.batch_size=2",
       "teacher.bootstrap.num_layers=2", "teacher.bootstrap.restorer_steps=50", "teacher.bootstrap.eval_every=10",
       "teacher.bootstrap.checkpoint_every=5", "encode.num_actors=1",
       "evaluate.metrics=[psnr, ssim]", "evaluate.data.center_crop=128", "evaluate.grid_images=1",
       "evaluate.efficiency.enabled=false", "evaluate.models=[bicubic, teacher, student]",
       "redundancy.calibration_size=4", "search.n=1", "search.m=2",  # N:M groups must divide the 2 blocks
       "search.steps=4", "search.calibration_size=8", "search.lora_rank=2", "search.checkpoint_every=0",
       "distill.train_size=8", "distill.stage1.steps=4", "distill.stage1.batch_size=2", "distill.stage2.steps=2",
       "distill.stage2.batch_size=2", "distill.checkpoint_every=0"] + FAST_TEACHER
ARGS = [f"--set={o}" for o in CFG]
QUALITY = ("psnr", "ssim")


def _env() -> dict[str, str]:
    """The CLI runs report to the session's Prefect API (the test harness's server), as a scheduled run reports
    to a Prefect server: each would otherwise start an ephemeral API of its own under the work dir (~10 s)."""
    from prefect.settings import PREFECT_API_URL

    return cli_env(PREFECT_API_URL=PREFECT_API_URL.value())


def _kill_when(workdir: Path, pattern: str, stall: float = STALL_S) -> set[int]:
    """Start the CLI, SIGKILL it when a line matching ``pattern`` appears; returns the pids it had started. Gives
    up only when the run printed nothing for ``stall`` seconds (a hung run), however slow the machine is."""
    proc, lines = start_cli("run", "--config", "tiny", "--workdir", str(workdir), *ARGS, env=_env())
    seen, out, last = set(), [], time.monotonic()
    root = psutil.Process(proc.pid)
    while time.monotonic() - last < stall:
        try:
            seen |= {p.pid for p in root.children(recursive=True)}
        except psutil.Error:
            pass
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        assert line is not None, "the run ended before the kill point:\n" + "".join(out[-40:])
        out.append(line)
        last = time.monotonic()
        if re.search(pattern, line):
            seen |= {p.pid for p in root.children(recursive=True)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return seen
    proc.kill()
    proc.wait()
    raise AssertionError(f"silent for {stall:.0f}s before {pattern!r}:\n" + "".join(out[-40:]))


def _gone_within(pids: set[int], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:80]}")
            except psutil.Error:
                continue
        if not alive:
            return []
        time.sleep(1)
    return alive


def _finish(workdir: Path, summary: Path) -> dict:
    res = run_cli("run", "--config", "tiny", "--workdir", str(workdir), "--summary", str(summary), *ARGS, env=_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads(summary.read_text())


def _step_metric(summary: dict, step: str, metric: str) -> float:
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return next(r for r in runs if r.info.run_name == step).data.metrics[metric]


@pytest.mark.timeout(1800)  # three CLI runs of the DAG; each wait follows the run's own output, not a clock
def test_kill_9_in_every_long_step_resumes_to_the_same_digests(tmp_path, prefect_harness):
    # the uninterrupted reference runs in this process (the same code and torch threads as the CLI: the thread
    # count follows OMP_NUM_THREADS in both), which spares a CLI start-up; the runs under test are real CLI processes
    ref = run_pipeline(load_config("tiny", CFG), tmp_path / "reference")
    work = tmp_path / "killed"
    kill_points = [
        ("bootstrap_teacher", r"bootstrap restorer 30/50"),  # checkpoints at 5, 10, …, 25 (30 racing)
        ("encode_latents", r"encode_latents: shard 3/"),
    ]
    for step, pattern in kill_points:
        pids = _kill_when(work, pattern)
        assert pids, step
        alive = _gone_within(pids, 30)
        assert not alive, (step, alive)
    final = _finish(work, tmp_path / "final.json")

    # every step's digest, the ones after the last kill point too (redundancy, search, both distillation stages):
    # the evaluation report and the registered version live under per-run prefixes, their numbers are compared
    assert set(final["steps"]) == set(ref["steps"]) and {"search_pruning", "distill_pixel"} <= set(ref["steps"])
    for step in set(ref["steps"]) - {"evaluate", "register"}:
        assert final["steps"][step]["digest"] == ref["steps"][step]["digest"], step
    for model in ("bicubic", "teacher"):
        for metric in QUALITY:
            key = f"{model}.{metric}"
            assert final["steps"]["evaluate"]["extra"]["metrics"][key] == pytest.approx(
                ref["steps"]["evaluate"]["extra"]["metrics"][key], rel=1e-5), key  # float32 conv sums

    client = MlflowClient(final["tracking_uri"])
    parents = client.search_runs([final["experiment_id"]], "tags.`srcompress.kind` = 'pipeline'")
    killed = [r for r in parents if r.info.status == "KILLED"]
    assert len(killed) == len(kill_points) and not [r for r in parents if r.info.status == "RUNNING"]
    # the same flow runs as Prefect sees them (each parent run names its flow run): the killed ones Crashed
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        states = {r.info.status: set() for r in parents}
        for r in parents:
            flow_run = prefect.read_flow_run(r.data.tags["srcompress.prefect_flow_run_id"])
            states[r.info.status].add(flow_run.state.type.value)
    assert states == {"KILLED": {"CRASHED"}, "FINISHED": {"COMPLETED"}}, states
    # each rerun redid only the unfinished part: the resumed teacher started from its last checkpoint
    teacher_runs = client.search_runs([final["experiment_id"]], "tags.`srcompress.step` = 'bootstrap_teacher'")
    resumed = [r.data.metrics.get("resumed_at_step", 0) for r in teacher_runs]
    assert max(resumed) >= 25, resumed  # not 0: the last checkpoint before the kill
    encode_runs = client.search_runs([final["experiment_id"]], "tags.`srcompress.step` = 'encode_latents'")
    assert any(r.data.metrics.get("shards_cached", 0) >= 2 and r.data.metrics.get("shards_computed", 0) > 0
               for r in encode_runs)  # the run after the encode kill kept the finished shards
