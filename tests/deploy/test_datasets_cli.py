"""``srcompress datasets register`` without the deployment stack (fast): it refuses what it cannot send or that
is not a dataset — one line, exit 2, credentials redacted — and a real event reaches a Prefect server's event
store with the payload prefect.yaml's triggers template. The full trigger → flow run path: test_real_server.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import boto3
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import SECRET, free_port

ROOT = Path(__file__).resolve().parents[2]
SRCOMPRESS = [sys.executable, "-m", "srcompress.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Prefect setting from this process (nor a profile: a fresh PREFECT_HOME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONWARNINGS="ignore")  # stderr is then exactly what the command says
    env.update(extra)
    return env


def _register(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SRCOMPRESS, "datasets", "register", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _one_line_exit_2(res: subprocess.CompletedProcess, pattern: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), res.stderr


def test_refuses_without_a_prefect_server(tmp_path):
    folder = _images(tmp_path / "photos")
    _one_line_exit_2(_register(_env(tmp_path), str(folder)), r"PREFECT_API_URL is not set")
    url = f"http://admin:{SECRET}@127.0.0.1:{free_port()}/api"  # nothing listens there
    res = _register(_env(tmp_path, PREFECT_API_URL=url), str(folder), "--for", "evaluate")
    _one_line_exit_2(res, r"does not answer")
    assert SECRET not in res.stdout + res.stderr and "***@127.0.0.1" in res.stderr


@pytest.mark.parametrize("case, args, pattern", [
    ("missing", ["{tmp}/nope"], r"no such folder"),
    ("empty", ["{tmp}/empty"], r"no images in this folder"),
    ("file for retrain", ["{tmp}/pairs.json"], r"not a folder"),
    ("bad purpose", ["{tmp}/photos", "--for", "deploy"], r"--for must be one of: retrain, evaluate"),
    ("bad name", ["{tmp}/photos", "--name", "a b"], r"--name 'a b'"),
    ("scheme", ["http://example.com/x"], r"unsupported scheme"),
])
def test_refuses_what_is_not_a_dataset(tmp_path, case, args, pattern):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "pairs.json").write_text("{}")
    _images(tmp_path / "photos")
    res = _register(_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api"),
                    *[a.format(tmp=tmp_path) for a in args])
    _one_line_exit_2(res, pattern)


def test_s3_prefix_is_listed_through_the_configs_store_settings(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="landed/a.png", Body=(_images(tmp_path / "p", 1) / "p0.png").read_bytes())
    s3.put_object(Bucket=bucket, Key="other/readme.txt", Body=b"not an image")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"extends": "tiny", "store": {"endpoint_url": endpoint}}))
    env = _env(tmp_path)
    res = _register(env, f"s3://{bucket}/other", "--config", str(cfg))
    _one_line_exit_2(res, rf"s3://{bucket}/other: no images under this prefix")
    # a prefix with images passes the listing and stops only at the missing server
    _one_line_exit_2(_register(env, f"s3://{bucket}/landed", "--config", str(cfg)), r"PREFECT_API_URL is not set")


def test_event_reaches_the_server_with_the_triggers_payload(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter
    from prefect.settings import PREFECT_API_URL

    folder = _images(tmp_path / "landed", 3)
    res = _register(_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value()), str(folder), "--name", "june")
    assert res.returncode == 0, res.stdout + res.stderr
    event_id = re.search(r"^event id: (\S+)$", res.stdout, re.M).group(1)
    assert "will trigger: nothing" in res.stderr  # nothing is deployed on the harness server
    deadline, events = time.monotonic() + 60, []
    while not events and time.monotonic() < deadline:  # the server persists events in batches
        with get_client(sync_client=True) as client:
            events = client.read_events(EventFilter(id=EventIDFilter(id=[UUID(event_id)])), limit=1).events
        time.sleep(0.5)
    assert events, f"event {event_id} never reached the server's event store"
    ev = events[0]
    assert ev.event == "srcompress.dataset.registered" and ev.resource.id == "srcompress.dataset.june"
    assert ev.payload["source"] == str(folder) and ev.payload["files"] == 3
    # prefect.yaml's trigger for this event templates exactly this payload key
    deps = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    overrides = deps["retrain-on-new-dataset"]["triggers"][0]["parameters"]["overrides"]
    assert "data.source={{ event.payload.source }}" in overrides
    assert deps["evaluate-on-new-dataset"]["triggers"][0]["parameters"]["data"] == "{{ event.payload.data }}"
