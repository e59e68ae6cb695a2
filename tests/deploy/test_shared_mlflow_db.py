"""Concurrent first use of one sqlite MLflow database: two pipeline runs that start at the same time with
``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) naming the same fresh sqlite file — or two runs of one work dir,
whose default is ``<workdir>/mlflow.db`` — would both run MLflow's schema migrations on it (``MlflowClient`` does
so on construction when the tables are missing) and one would fail. ``Tracker`` holds an exclusive lock beside
the database while the client is built (``infra/tracking.py``), so every process opens it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

SCRIPT = """
import sys, time
from pathlib import Path
from srcompress.infra.tracking import Tracker, TrackingConfig  # imports mlflow: done before the start signal
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
Tracker(TrackingConfig(uri=sys.argv[1]), sys.argv[3])
"""


@pytest.mark.slow
def test_three_processes_open_one_fresh_sqlite_mlflow_db_at_once(tmp_path):
    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, uri, str(go), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    try:
        time.sleep(15)  # every process has imported mlflow and waits
        go.touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    failed = [o[-600:] for p, o in zip(procs, outs, strict=True) if p.returncode != 0]  # every process checked
    assert not failed, failed
