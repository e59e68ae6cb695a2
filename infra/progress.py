"""Live progress of a CLI run, read from what the steps already report to MLflow (no second channel).

The training ranks of the search and both distillation stages log their loss to their step run at every
``log_every`` steps, wherever they run (a local Ray, a cluster); the tracking store is the one place the CLI can
read them from. :class:`ProgressWatcher` polls it on a thread: it finds this process's pipeline run (tag
``srcompress.owner.pid``), the step runs under it that are ``RUNNING``, and each step's latest metric step, and
prints ``search_pruning  60/150 (40%)  loss 0.0123  1:02 elapsed, ETA 1:33``. Steps with no per-step metric
(bootstrap, encode, evaluation) get an elapsed-time line. On a terminal a line is printed at most every
``tty_every_s`` seconds or 10%; in logs (not a terminal) once per ``log_every_pct`` percent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from srcompress.infra.tracking import TAG_PREFIX as TAG  # the owner tags Tracker.start_pipeline_run writes



@dataclass(frozen=True)
class Tracked:
    metric: str  # the step run's per-step metric ("loss", "stage1.loss", …)
    total: int   # its last step


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(step: str, done: int, total: int, value: float | None, metric: str, elapsed: float) -> str:
    pct = 100.0 * done / total if total else 0.0
    eta = elapsed / done * (total - done) if done else float("nan")
    loss = f"  {metric} {value:.4g}" if value is not None else ""
    eta_s = f", ETA {fmt_seconds(eta)}" if done and done < total else ""
    return f"{step:<20s} {done}/{total} ({pct:.0f}%){loss}  {fmt_seconds(elapsed)} elapsed{eta_s}"


class ProgressWatcher:
    """Prints progress lines of this process's pipeline run until :meth:`stop`."""

    def __init__(self, tracking_uri: str, tracked: dict[str, Tracked], emit: Callable[[str], None], tty: bool,
                 poll_s: float = 2.0, tty_every_s: float = 15.0, log_every_pct: float = 25.0):
        self.uri, self.tracked, self.emit, self.tty = tracking_uri, tracked, emit, tty
        self.poll_s, self.tty_every_s, self.log_every_pct = poll_s, tty_every_s, log_every_pct
        self._stop = threading.Event()
        self._shown: dict[str, tuple[float, float]] = {}  # run id → (last printed percent, time)
        self._thread = threading.Thread(target=self._loop, name="srcompress-progress", daemon=True)

    def start(self) -> "ProgressWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        client = None
        while not self._stop.wait(self.poll_s):
            try:  # the database may not exist yet, or be busy: progress is best effort, never a failure
                if client is None:
                    from mlflow import MlflowClient

                    client = MlflowClient(tracking_uri=self.uri)
                self.poll(client)
            except Exception:
                continue

    def _due(self, run_id: str, pct: float, now: float) -> bool:
        last_pct, last_t = self._shown.get(run_id, (-1.0, 0.0))
        if self.tty:
            return pct >= 100 > last_pct or pct - last_pct >= 10 or now - last_t >= self.tty_every_s
        return int(pct // self.log_every_pct) > int(last_pct // self.log_every_pct) if last_pct >= 0 else True

    def poll(self, client) -> None:
        """One look at the tracking store: a line for each running step that is due one."""
        pid_filter = (f"tags.\"{TAG}owner.pid\" = '{os.getpid()}' and tags.\"{TAG}owner.host\" = "
                      f"'{socket.gethostname()}' and attributes.status = 'RUNNING'")
        parents = client.search_runs([e.experiment_id for e in client.search_experiments()], pid_filter,
                                     max_results=5)
        now = time.time()
        for parent in parents:
            steps = client.search_runs([parent.info.experiment_id],
                                       f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                                       "attributes.status = 'RUNNING'", max_results=20)
            for run in steps:
                name = run.info.run_name or ""
                elapsed = now - run.info.start_time / 1000
                spec = next((t for n, t in self.tracked.items() if name == n or name.startswith(n + "_")), None)
                if spec is None:
                    if self._due(run.info.run_id, 0.0, now) and (not self.tty or elapsed >= self.tty_every_s):
                        self._shown[run.info.run_id] = (0.0, now)
                        self.emit(f"{name:<20s} running, {fmt_seconds(elapsed)} elapsed")
                    continue
                latest = max(client.get_metric_history(run.info.run_id, spec.metric), key=lambda m: m.step,
                             default=None)
                done, value = (latest.step, latest.value) if latest is not None else (0, None)
                pct = 100.0 * done / spec.total if spec.total else 0.0
                if done and self._due(run.info.run_id, pct, now):
                    self._shown[run.info.run_id] = (pct, now)
                    self.emit(progress_line(name, done, spec.total, value, spec.metric, elapsed))
