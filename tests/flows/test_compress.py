"""The compress flow end to end under one Prefect test harness: caching, resume, lineage, S3, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from tests.conftest import free_port
from tests.tasks.odd_images import odd_files, write_folder

pytestmark = pytest.mark.usefixtures("prefect_harness", "module_ray")

# Small but real: the sklearn + Kodak photos, 2 crops each, 64-px HQ crops, 4 pairs per shard.
SMALL = ["data.bundled_sets=[sklearn, kodak]", "data.held_out=[]", "degrade.crop_size=64", "degrade.crops_per_image=2",
         "degrade.shard_size=4", "degrade.batch_size=4"]


def _step_runs(tracking_uri: str, parent: str):
    client = MlflowClient(tracking_uri)
    parent_run = client.get_run(parent)
    runs = client.search_runs([parent_run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return client, parent_run, {r.data.tags["srcompress.step"]: r for r in runs}


def test_run_twice_is_fully_cached_and_lineage_is_recorded(tmp_path):
    cfg = load_config("tiny", SMALL)
    first = run_pipeline(cfg, tmp_path / "w", until="degrade", summary=tmp_path / "s1.json")
    m = first["steps"]["degrade"]
    assert m["counts"] == {"pairs": 14, "shards": 4, "sources": 7, "quarantined": 0, "converted": 0, "duplicates": 0}
    assert json.loads((tmp_path / "s1.json").read_text())["parent_run_id"] == first["parent_run_id"]

    client, parent, steps = _step_runs(first["tracking_uri"], first["parent_run_id"])
    run = steps["degrade"]
    assert parent.info.status == "FINISHED" and run.info.status == "FINISHED"
    assert run.data.tags["srcompress.cache_hit"] == "False" and run.data.metrics["shards_computed"] == 4
    assert run.data.params["degrade.crop_size"] == "64" and run.data.params["degrade.preset"] == "seesr"
    (ds,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in ds.tags}["srcompress.sha256"] == m["digest"]
    assert parent.data.tags["srcompress.step.degrade.digest"] == m["digest"]

    second = run_pipeline(cfg, tmp_path / "w", until="degrade")
    assert second["steps"]["degrade"] == m  # same manifest, same digests
    _, _, steps2 = _step_runs(second["tracking_uri"], second["parent_run_id"])
    assert steps2["degrade"].data.tags["srcompress.cache_hit"] == "True"
    assert steps2["degrade"].data.tags["srcompress.source_run_id"] == run.info.run_id

    # Delete one shard: the rerun regenerates exactly that one, byte-identical.
    store = tmp_path / "w" / "store"
    index = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    victim = store / index["shards"][2]["key"]
    victim.unlink()
    third = run_pipeline(cfg, tmp_path / "w", until="degrade")
    assert third["steps"]["degrade"]["digest"] == m["digest"] and victim.is_file()
    _, _, steps3 = _step_runs(third["tracking_uri"], third["parent_run_id"])
    assert steps3["degrade"].data.metrics["shards_computed"] == 1
    assert steps3["degrade"].data.metrics["shards_cached"] == 3

    # Corrupt another shard in place (same size, record untouched): not trusted, recomputed, healed.
    victim = store / index["shards"][0]["key"]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    fourth = run_pipeline(cfg, tmp_path / "w", until="degrade")
    assert fourth["steps"]["degrade"]["digest"] == m["digest"] and victim.read_bytes() != bytes(data)
    _, _, steps4 = _step_runs(fourth["tracking_uri"], fourth["parent_run_id"])
    assert steps4["degrade"].data.metrics["shards_computed"] == 1


def test_result_does_not_depend_on_worker_count(tmp_path):
    one = run_pipeline(load_config("tiny", SMALL + ["run.max_workers=1"]), tmp_path / "a", until="degrade")
    two = run_pipeline(load_config("tiny", SMALL + ["run.max_workers=2"]), tmp_path / "b", until="degrade")
    assert one["steps"]["degrade"]["digest"] == two["steps"]["degrade"]["digest"]


def test_bad_inputs_are_quarantined_and_nothing_is_lost(tmp_path):
    folder = write_folder(tmp_path / "hr", odd_files(96))
    (folder / "sub").mkdir()
    (folder / "sub" / "copy.png").write_bytes((folder / "good.png").read_bytes())  # duplicate content
    (folder / ".hidden.png").write_bytes(b"junk")
    cfg = load_config("tiny", [f"data.source={folder}", "data.held_out=[]", "degrade.crop_size=64",
                               "degrade.crops_per_image=1"])
    out = run_pipeline(cfg, tmp_path / "w", until="degrade")
    m = out["steps"]["degrade"]
    # 10 usable files, one a byte-identical duplicate; 5 quarantined: truncated, corrupt, text, empty, too small
    assert m["counts"]["sources"] == 9 and m["counts"]["duplicates"] == 1 and m["counts"]["quarantined"] == 5
    assert m["counts"]["converted"] == 7 and m["counts"]["pairs"] == 9
    report = json.loads(Path(m["extra"]["quarantine_report"].removeprefix("file://")).read_text())
    reasons = {q["name"]: q["reason"] for q in report["quarantined"]}
    assert set(reasons) == {"truncated.jpg", "corrupt.png", "notes.txt", "empty.png", "tiny.png"}
    assert "smaller than the HQ crop" in reasons["tiny.png"] and "empty" in reasons["empty.png"]
    for q in report["quarantined"]:  # the bad files themselves are kept in the store (not the empty one)
        if q["name"] != "empty.png":
            assert Path(q["copied_to"].removeprefix("file://")).read_bytes() == (folder / q["name"]).read_bytes()
    assert (folder / "truncated.jpg").exists()  # the source folder is never modified


def test_s3_store_and_s3_source(tmp_path, s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    # the store comes from the environment this time (config works too: see test_store.py)
    monkeypatch.setenv("SRCOMPRESS_STORE_URI", f"s3://{bucket}/srcompress")
    monkeypatch.setenv("SRCOMPRESS_S3_ENDPOINT_URL", endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for name, data in odd_files(96).items():
        if name in ("good.png", "good.jpg", "gray.png", "rgba.png", "notes.txt"):
            s3.put_object(Bucket=bucket, Key=f"datasets/hr/{name}", Body=data)
    cfg = load_config("tiny", [f"data.source=s3://{bucket}/datasets/hr", "data.held_out=[]", "degrade.crop_size=64",
                               "degrade.crops_per_image=4",
                               "degrade.shard_size=2"])
    first = run_pipeline(cfg, tmp_path / "w", until="degrade")
    m = first["steps"]["degrade"]
    assert m["uri"].startswith(f"s3://{bucket}/srcompress/degrade/pairs/")
    assert m["counts"]["sources"] == 4 and m["counts"]["quarantined"] == 1 and m["counts"]["pairs"] == 16
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="srcompress/").get("Contents", [])]
    assert sum(k.startswith("srcompress/degrade/shards/") for k in keys) == 8
    assert any(k.startswith("srcompress/mlflow/") for k in keys)  # MLflow artifacts went through the store
    assert not (tmp_path / "w" / "store").exists()
    second = run_pipeline(cfg, tmp_path / "w", until="degrade")
    assert second["steps"]["degrade"] == m
    _, _, steps = _step_runs(second["tracking_uri"], second["parent_run_id"])
    assert steps["degrade"].data.tags["srcompress.cache_hit"] == "True"


def test_cli_run_writes_summary_and_reports_unreachable_store(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--config", "configs/tiny.yaml", "--workdir", str(tmp_path / "w"),
                              "--until", "degrade", "--summary", str(tmp_path / "s.json"), *sum((["--set", s] for s in SMALL), [])])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["steps"]["degrade"]["kind"] == "pairs" and summary["parent_run_id"]
    dead = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(app, ["run", "--config", "configs/tiny.yaml", "--workdir", str(tmp_path / "w2"),
                              "--set", "store.uri=s3://bucket/x", "--set", f"store.endpoint_url={dead}",
                              "--set", "store.max_attempts=1", "--set", "store.connect_timeout_s=0.5"])
    assert res.exit_code == 3 and "unreachable" in res.output
    res = runner.invoke(app, ["run", "--config", "configs/tiny.yaml", "--until", "nope"])
    assert res.exit_code == 2
