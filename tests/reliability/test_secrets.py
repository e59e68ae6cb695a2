"""The secret sweep: a distinct secret in every place a user can put one, searched for in every sink."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.conftest import SECRET
from tests.reliability.conftest import cli_env, run_cli

pytestmark = pytest.mark.reliability

SMALL = ["data.bundled_sets=[sklearn]", "data.held_out=[]", "degrade.crop_size=64", "degrade.crops_per_image=1",
         "degrade.shard_size=2"]


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
    res = run_cli(
        "run", "--config", "tiny", "--workdir", str(work), "--until", "degrade", "--summary", str(summary),
        *(f"--set={o}" for o in SMALL),
        f"--set=store.uri=s3://{bucket}/srcompress",
        f"--set=store.endpoint_url=http://srcuser:{secrets['userinfo']}@{host}",  # dialed: userinfo works
        f"--set=data.endpoint_url=http://127.0.0.1:9/?X-Amz-Security-Token={secrets['query']}"
        f"&X-Amz-Signature={secrets['signature']}",  # carried in the config, logged as a param
        f"--set=evaluate.data.endpoint_url=http://reader:{secrets['field']}@example.invalid",
        env=cli_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(summary.read_text())["steps"]["degrade"]["counts"]["pairs"] == 2

    sinks: dict[str, bytes] = {"stdout": res.stdout.encode(), "stderr": res.stderr.encode(),
                               "summary": summary.read_bytes()}
    for path in work.rglob("*"):  # mlflow.db, Prefect's database and logs, scratch, …
        if path.is_file():
            sinks[str(path.relative_to(work))] = path.read_bytes()
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
