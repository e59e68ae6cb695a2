"""The secret sweep: a distinct secret in every place a user can put one, searched for in every sink."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import boto3
import pytest

from tests.conftest import SECRET
from tests.reliability.conftest import cli_env, run_cli
from tests.upstream import FAST_TEACHER

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# The whole DAG, small: every sink a run writes to is filled — step runs, the registered version's lineage
# tags, the evaluation report, the store's checkpoints and manifests.
SMALL = ["data.bundled_sets=[sklearn, kodak]", "data.held_out=[kodak/I04.bmp]", "degrade.crop_size=64",
         "degrade.crops_per_image=1", "degrade.shard_size=4", "teacher.bootstrap.num_layers=2",
         "teacher.bootstrap.restorer_steps=4", "teacher.bootstrap.batch_size=4", "teacher.bootstrap.eval_every=2",
         "encode.num_actors=1", "redundancy.calibration_size=4", "search.n=1", "search.m=2", "search.steps=4",
         "search.calibration_size=8", "search.lora_rank=2", "search.checkpoint_every=2",
         "evaluate.metrics=[psnr, ssim]", "evaluate.data.center_crop=64", "evaluate.efficiency.enabled=false",
         "evaluate.grid_images=1", "evaluate.models=[bicubic, teacher, student]", "distill.train_size=8",
         "distill.stage1.steps=4", "distill.stage1.batch_size=2", "distill.stage2.steps=2",
         "distill.stage2.batch_size=2", "distill.checkpoint_every=2", "registry.model_name=secret-sweep"] + FAST_TEACHER


@pytest.mark.timeout(1500)  # the whole (small) DAG in a subprocess
def test_no_secret_reaches_any_sink(tmp_path, s3_bucket):
    endpoint, bucket = s3_bucket
    secrets = {
        "env": SECRET,  # AWS_SECRET_ACCESS_KEY of the loopback S3 server (tests/conftest.py)
        "userinfo": "USERINFO-SECRET-7f3a",
        "query": "QUERY-TOKEN-SECRET-91bc",
        "signature": "SIGNATURE-SECRET-55de",
        "field": "FIELD-SECRET-c0c0",
    }
    host = endpoint.removeprefix("http://")
    work, summary = tmp_path / "w", tmp_path / "summary.json"
    # The run's Ray sessions (every step that starts a local cluster) write their logs under a private temp
    # dir, swept below. Short: Ray's unix sockets live there and AF_UNIX paths are limited to 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="srs-", dir="/tmp"))
    res = run_cli(
        "run", "--config", "tiny", "--workdir", str(work), "--summary", str(summary),
        *(f"--set={o}" for o in SMALL),
        f"--set=store.uri=s3://{bucket}/srcompress",
        f"--set=store.endpoint_url=http://srcuser:{secrets['userinfo']}@{host}",  # dialed: userinfo works
        f"--set=data.endpoint_url=http://127.0.0.1:9/?X-Amz-Security-Token={secrets['query']}"
        f"&X-Amz-Signature={secrets['signature']}",  # carried in the config, logged as a param
        f"--set=evaluate.data.endpoint_url=http://reader:{secrets['field']}@example.invalid",
        env=cli_env(RAY_TMPDIR=str(ray_tmp)))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["model_version"] == "models:/secret-sweep/1"  # registered: its tags are in the sweep

    sinks: dict[str, bytes] = {"stdout": res.stdout.encode(), "stderr": res.stderr.encode(),
                               "summary": summary.read_bytes()}
    for path in work.rglob("*"):  # mlflow.db, Prefect's database and logs, scratch, …
        if path.is_file():
            sinks[str(path.relative_to(work))] = path.read_bytes()
    ray_logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket() and "/logs/" in str(p)]
    assert any(p.name.startswith("raylet") for p in ray_logs), sorted(p.name for p in ray_logs)[:20]
    for path in ray_logs:  # the Ray sessions' logs: raylet, GCS, every worker's stdout/stderr
        sinks[f"ray:{path.relative_to(ray_tmp)}"] = path.read_bytes()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert any("/mlflow/" in o["Key"] for o in objects)  # the MLflow artifact tree lives in the store
    for obj in objects:  # the store and the MLflow artifacts in it
        sinks[f"s3://{bucket}/{obj['Key']}"] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    assert any(name.endswith("mlflow.db") for name in sinks) and any(".prefect" in name for name in sinks)

    leaks = [(where, name) for where, data in sinks.items() for name, value in secrets.items()
             if value.encode() in data]
    assert not leaks, leaks
    # the redacted forms are what the records show instead
    db = sinks["mlflow.db"]
    assert b"http://***@" in db and b"X-Amz-Security-Token=***" in db
