"""infra/ray_cluster.py: a step's Ray session, and the flow run's scope that keeps one Ray for every step."""

from __future__ import annotations

import time

import pytest
import ray

from srcompress.infra.ray_cluster import RankFailed, ray_scope, ray_session, train_on_ray


def _gcs() -> str:
    return ray.get_runtime_context().gcs_address


def test_a_session_stops_the_ray_it_started_and_a_scope_keeps_it_for_the_next_step():
    assert not ray.is_initialized()
    with ray_session(None, num_cpus=1) as info:
        assert info.startswith("local (1 CPUs")
    assert not ray.is_initialized()  # outside a scope: one cluster per step

    with ray_scope():
        with ray_session(None, num_cpus=1):
            first = _gcs()
        assert ray.is_initialized()  # the step ended, the run's Ray did not
        with ray_scope():  # nested (a flow called from a flow): only the outermost scope stops it
            with ray_session(None, num_cpus=1):
                assert _gcs() == first  # the second step joined the same cluster
        assert ray.is_initialized()
    assert not ray.is_initialized()  # the scope ended: stopped


def test_a_scope_leaves_a_ray_it_did_not_start_alone():
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        with ray_scope():
            with ray_session(None):
                pass
        assert ray.is_initialized()  # the test's own Ray (e.g. a caller's session) is not the scope's to stop
    finally:
        ray.shutdown()


def _record(config: dict) -> None:
    """A training loop: DeepSpeed's process group, one all-reduce, and a line ``launch rank pid sum``."""
    import os

    import deepspeed
    import torch
    import torch.distributed as dist

    from srcompress.tasks.common.training import init_rank

    assert not dist.is_initialized()  # fresh or reused, a rank's loop starts without a process group
    init_rank(None, config["world"])  # as the search and distillation ranks do: DeepSpeed (re)builds the group
    t = torch.ones(1)
    dist.all_reduce(t)
    assert deepspeed.comm.get_world_size() == config["world"]
    assert deepspeed.comm.comm.cdb.shm_comm_op is None  # the inference-only shared-memory op was not built
    with open(config["out"], "a") as f:
        f.write(f"{config['launch']} {dist.get_rank()} {os.getpid()} {int(t.item())}\n")


def _free_cpus(expected: float, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while (cpus := ray.available_resources().get("CPU", 0.0)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)  # the resource view lags a removed placement group by a heartbeat
    return cpus


def test_a_flow_runs_consecutive_training_launches_reuse_their_rank_processes(tmp_path):
    out = tmp_path / "ranks.txt"
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        with ray_scope():
            for launch in (1, 2):
                config = {"out": str(out), "launch": launch, "world": 2}
                train_on_ray(_record, config, 2, False, f"l{launch}", None)
            assert _free_cpus(0.0) == 0.0  # kept for the run's next launch: their cores stay reserved
            with ray_session(None):  # any other Ray step of the run stops them first
                assert _free_cpus(2.0) == 2.0
            train_on_ray(_record, {"out": str(out), "launch": 3, "world": 1}, 1, False, "l3", None)
        assert _free_cpus(2.0) == 2.0  # the run ended: nothing kept past it
        train_on_ray(_record, {"out": str(out), "launch": 4, "world": 1}, 1, False, "l4", None)  # no run: none kept
        assert _free_cpus(2.0) == 2.0
    finally:
        ray.shutdown()
    pids: dict[int, dict[int, int]] = {}
    for line in out.read_text().splitlines():
        launch, rank, pid, total = map(int, line.split())
        assert total == (2 if launch < 3 else 1), line  # every launch had a working process group, reused or not
        pids.setdefault(launch, {})[rank] = pid
    assert {k: sorted(v) for k, v in pids.items()} == {1: [0, 1], 2: [0, 1], 3: [0], 4: [0]}, pids
    assert pids[2] == pids[1]  # the second launch ran in the first one's processes
    assert pids[3][0] not in pids[1].values()  # stopped by the other step: a fresh process


def _log_then_fail(config: dict) -> None:
    import logging

    log = logging.getLogger("srcompress.tasks.fake_worker")
    for i in range(30):
        log.info("step %d: loss %.3f", i, 1.0 / (i + 1))
    raise ValueError("the rank's own error")


def test_a_failing_rank_reports_its_traceback_and_last_log_lines():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        with pytest.raises(RankFailed) as err:
            train_on_ray(_log_then_fail, {}, 1, False, "failing", None)
    finally:
        ray.shutdown()
    text = str(err.value)
    assert "failing failed on rank 0" in text and "ValueError: the rank's own error" in text
    assert "in _log_then_fail" in text  # the rank's own frame
    assert "last 20 log lines of this rank" in text and "step 29: loss 0.033" in text and "step 9:" not in text
