"""Progress lines read from the step runs' metrics (infra/progress.py), against a real MLflow sqlite store."""

from __future__ import annotations

import os
import re
import socket

from mlflow import MlflowClient

from srcompress.infra.progress import ProgressWatcher, Tracked, fmt_seconds


def _runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("p")
    parent = client.create_run(exp, run_name="tiny", tags={"srcompress.owner.pid": str(os.getpid()),
                                                           "srcompress.owner.host": socket.gethostname()})
    other = client.create_run(exp, run_name="tiny", tags={"srcompress.owner.pid": "1",  # another process's run
                                                          "srcompress.owner.host": socket.gethostname()})
    step = client.create_run(exp, run_name="search_pruning", tags={"mlflow.parentRunId": parent.info.run_id})
    foreign = client.create_run(exp, run_name="search_pruning", tags={"mlflow.parentRunId": other.info.run_id})
    boot = client.create_run(exp, run_name="bootstrap_teacher", tags={"mlflow.parentRunId": parent.info.run_id})
    return uri, client, step.info.run_id, foreign.info.run_id, boot.info.run_id


def test_running_steps_of_this_process_get_step_total_loss_and_eta(tmp_path):
    uri, client, step, foreign, _ = _runs(tmp_path)
    lines: list[str] = []
    w = ProgressWatcher(uri, {"search_pruning": Tracked("loss", 40)}, lines.append, tty=False, log_every_pct=25)
    for s, loss in ((5, 0.9), (10, 0.5)):
        client.log_metric(step, "loss", loss, step=s)
    client.log_metric(foreign, "loss", 7.0, step=30)
    w.poll(client)
    [line] = [ln for ln in lines if ln.startswith("search_pruning")]
    assert re.fullmatch(r"search_pruning\s+10/40 \(25%\)  loss 0\.5  \d+:\d\d elapsed, ETA \d+:\d\d", line), line
    client.log_metric(step, "loss", 0.4, step=15)  # 37.5%: still in the same quarter, no new line in logs
    w.poll(client)
    assert sum(ln.startswith("search_pruning") for ln in lines) == 1
    client.log_metric(step, "loss", 0.3, step=20)
    w.poll(client)
    assert lines[-1].startswith("search_pruning") and "20/40 (50%)" in lines[-1] and "loss 0.3" in lines[-1]
    assert not any("30/40" in ln for ln in lines)  # another process's pipeline is not ours to show


def test_steps_without_a_per_step_metric_show_elapsed_and_finished_steps_nothing(tmp_path):
    uri, client, step, _, boot = _runs(tmp_path)
    lines: list[str] = []
    w = ProgressWatcher(uri, {"search_pruning": Tracked("loss", 40)}, lines.append, tty=False)
    w.poll(client)
    assert any(re.fullmatch(r"bootstrap_teacher\s+running, \d+:\d\d elapsed", ln) for ln in lines), lines
    client.set_terminated(boot, "FINISHED")
    client.set_terminated(step, "FINISHED")
    n = len(lines)
    client.log_metric(step, "loss", 0.1, step=40)
    w.poll(client)
    assert len(lines) == n


def test_seconds_read_as_a_clock():
    assert fmt_seconds(59.6) == "1:00" and fmt_seconds(3725) == "1:02:05" and fmt_seconds(-3) == "0:00"
