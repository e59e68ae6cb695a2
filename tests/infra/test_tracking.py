"""MLflow lineage records: on sqlite, and through a real `mlflow server` whose artifacts go to S3."""

from __future__ import annotations

import boto3
import pytest
from mlflow import MlflowClient

from srcompress.infra.manifest import Manifest
from srcompress.infra.tracking import Tracker, TrackingConfig
from tests.conftest import SECRET


def _manifest() -> Manifest:
    return Manifest(kind="pairs", step="degrade", uri="file:///tmp/x/index.json", digest="ab" * 32,
                    config_hash="c" * 64, inputs={"sources": "s" * 64}, code_version="0.1.0+x", cache_key="k" * 64,
                    counts={"pairs": 12, "quarantined": 1})


def _exercise(tracker: Tracker) -> tuple[str, str]:
    parent = tracker.start_pipeline_run("p", {"config_hash": "h"},
                                        {"store": {"uri": "s3://b/p"}, "tracking": {"uri": "http://u:pw@host"},
                                         "aws_secret_access_key": SECRET})
    with tracker.step_run(parent, "degrade", {"degrade": {"crop_size": 64}}, {"cache_hit": False}) as child:
        tracker.log_manifest_output(child, _manifest())
    tracker.end_run(parent)
    return parent, child


def _check(client: MlflowClient, parent: str, child: str) -> None:
    c = client.get_run(child)
    assert c.data.tags["mlflow.parentRunId"] == parent
    assert c.data.tags["srcompress.output.digest"] == "ab" * 32
    assert c.data.params["degrade.crop_size"] == "64"
    assert c.data.metrics["count.pairs"] == 12 and c.info.status == "FINISHED"
    (ds,) = c.inputs.dataset_inputs
    assert ds.dataset.digest == ("ab" * 32)[:36]
    tags = {t.key: t.value for t in ds.tags}
    assert tags["srcompress.sha256"] == "ab" * 32 and tags["mlflow.data.context"] == "output"
    p = client.get_run(parent)
    flat = str(p.data.params)
    assert SECRET not in flat and "pw@" not in flat and p.data.tags["srcompress.config_hash"] == "h"
    arts = [a.path for a in client.list_artifacts(child, "manifests")]
    assert arts == ["manifests/degrade-pairs.json"]


def test_sqlite_backend_and_store_artifacts(tmp_path):
    store_root = (tmp_path / "store").as_uri()
    tracker = Tracker(TrackingConfig(), tmp_path, store_root)
    assert tracker.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    parent, child = _exercise(tracker)
    _check(tracker.client, parent, child)
    # artifacts went through the artifact store's folder
    assert list((tmp_path / "store" / "mlflow").rglob("degrade-pairs.json"))


def test_failed_step_marks_run_failed(tmp_path):
    tracker = Tracker(TrackingConfig(), tmp_path)
    parent = tracker.start_pipeline_run("p", {}, {})
    with pytest.raises(RuntimeError):
        with tracker.step_run(parent, "degrade", {}) as child:
            raise RuntimeError("boom")
    assert tracker.client.get_run(child).info.status == "FAILED"


def test_mlflow_server_with_s3_artifacts(tmp_path, mlflow_server):
    tracker = Tracker(TrackingConfig(uri=mlflow_server["url"], experiment="server-test"), tmp_path)
    parent, child = _exercise(tracker)
    _check(MlflowClient(mlflow_server["url"]), parent, child)
    s3 = boto3.client("s3", endpoint_url=mlflow_server["endpoint"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mlflow_server["bucket"]).get("Contents", [])]
    assert any(k.endswith("manifests/degrade-pairs.json") for k in keys), keys


def test_a_registry_call_leaves_no_process_wide_registry_uri(tmp_path, monkeypatch):
    """infra/registry.py uses MLflow's fluent API for one call; afterwards a client opened on another tracking
    URI must read that URI's registry, not the last registry this process wrote to (a real-server test once
    failed on that: an earlier in-process registration left its sqlite registry behind)."""
    import os

    from srcompress.infra.registry import _fluent

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, other = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    with _fluent(first):
        assert MlflowClient(tracking_uri=other)._registry_uri == first  # inside: the fluent registry
    assert MlflowClient(tracking_uri=other)._registry_uri == other
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_two_runs_logging_one_dataset_at_once_both_record_it(tmp_path):
    """The race of a scheduled and a triggered retrain on one MLflow database, forced: run B logs the same step
    output (same name and digest) between run A's dataset lookup and its insert. The real sqlite store then
    raises on A's insert (unique experiment/name/digest); ``log_manifest`` retries, finds B's row and links it."""
    from sqlalchemy import event

    a, b = Tracker(TrackingConfig(), tmp_path), Tracker(TrackingConfig(), tmp_path)
    run_a, run_b = (t.start_pipeline_run(name, {}, {}) for t, name in ((a, "a"), (b, "b")))
    engine = a.client._tracking_client.store.engine  # the sqlite store's engine (shared by both trackers)
    raced: list[str] = []

    def b_first(conn, cursor, statement, *args):
        if statement.lstrip().startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)
            b.log_manifest(run_b, _manifest(), context="output")  # another connection: inserted and committed

    event.listen(engine, "before_cursor_execute", b_first)
    try:
        a.log_manifest(run_a, _manifest(), context="output")
    finally:
        event.remove(engine, "before_cursor_execute", b_first)
    assert raced  # the insert of A really came second
    for tracker, run in ((a, run_a), (b, run_b)):
        inputs = tracker.client.get_run(run).inputs.dataset_inputs
        assert [d.dataset.digest for d in inputs] == [_manifest().digest[:36]], run
