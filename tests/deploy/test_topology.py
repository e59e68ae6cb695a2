"""The scale-out topology of infra/deploy/cluster.yaml, on loopback, with every service a real process (slow).

- a Ray head and a Ray worker, each started with ``ray start`` as its own process (own session, 1 CPU each,
  a private ``--temp-dir`` and free ports, so nothing is shared with another Ray on this machine);
- a real ``mlflow server`` (fixture ``mlflow_server``) whose artifacts it proxies to a moto S3 server;
- the artifact store on that S3 server (``store.uri=s3://<bucket>/<prefix>``, ``store.endpoint_url``);

then the tiny DAG (``run_pipeline`` in this process, which joins the cluster as its Ray driver, ``run.ray_address``):
degradation shards and evaluation scoring as Ray tasks on that cluster (some of each must have run in a
process of the worker node: the workers they report are checked against the raylet children seen), the search
and both distillation stages on 2 DeepSpeed ranks (Ray actors) on that cluster, and ``srcompress lineage
models:/<name>@candidate --verify`` read back from the MLflow server and the S3 store.

Where the ranks ran. Each node has exactly 1 CPU and a training rank asks for 1, so 2 ranks can only be placed
as one rank per node; the test does not rely on that alone, it observes it:

- Ray's GCS actor table (``ray._private.state.actors()``: the Ray state API ``ray.util.state.list_actors``
  needs the dashboard, which ``ray[data]`` does not install) keeps every ``DeepSpeedRank`` actor after it
  ended, with its job, node id and pid. The run keeps one Ray session (one job), and its three trainings
  (search, stage 1, stage 2) run in one pair of rank actors kept from launch to launch: there must be 2, one on
  each node;
- the worker node's id is tied to the worker ``ray start`` process: its ``RayletSocketName`` (``ray.nodes()``)
  is the socket of the ``raylet`` in that process's own process group;
- while the DAG runs, a watcher thread records the children of each raylet (a Ray worker process is forked by
  its node's raylet); the pid the actor table gives for each rank must have been seen as a child of the raylet
  of the node the table names, so the rank on the worker node really ran in a process of the worker node.

The manifests of search_pruning / distill_latent / distill_pixel must say world_size 2 (as must the step
runs' MLflow tags), every store object must be in the moto bucket and none on local disk, and the MLflow
runs' and the registered model's artifacts must be S3 objects under the server's ``--artifacts-destination``.

On the same cluster, the data steps alone: degradation, the encode step (Ray Data actors) and evaluation scoring
run there and give the bytes and the numbers of a run on the local Ray.

Stopping: the cluster is ``tests/ray_nodes.private_cluster``, ended by pid (every process of its two
``ray start`` process groups or naming its temp dir, and their descendants), never with ``ray stop``, which
ends every Ray on the host.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from urllib.parse import urlparse

import psutil
import pytest
import torch

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.flows.evaluate import run_evaluation
from srcompress.tasks.common.sources import bundled_files
from tests.ray_nodes import private_cluster
from tests.tasks.test_teacher_encode import _latents
from tests.upstream import FAST, seed_workdir
from tests.tasks.test_distill import DISTILL
from tests.tasks.test_register import EVALUATE

# Both tests use the module's one cluster (started once: two `ray start` processes), so they run on one xdist
# worker, one after the other.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness"), pytest.mark.xdist_group("two_node")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head and a worker, each a separate ``ray start`` process of 1 CPU (tests/ray_nodes.py)."""
    with private_cluster(tmp_path_factory.mktemp("cluster"), workers=1) as c:
        yield c

STEPS = ("degrade", "bootstrap_teacher", "encode_latents", "analyse_redundancy", "search_pruning",
         "distill_latent", "distill_pixel", "evaluate")
RANKED = ("search_pruning", "distill_latent", "distill_pixel")


class _RayletChildren(threading.Thread):
    """Records, every 0.3 s, which raylet (node id) each child process belongs to."""

    def __init__(self, raylets: dict[str, psutil.Process]):
        super().__init__(daemon=True)
        self.raylets, self.seen, self.halt = raylets, {}, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for node, raylet in self.raylets.items():
                try:
                    for child in raylet.children():
                        self.seen.setdefault(child.pid, node)
                except psutil.Error:
                    pass
            self.halt.wait(0.3)


def _s3_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _proxied_prefix(artifact_uri: str) -> str:
    """``mlflow-artifacts:/<exp>/<run>/artifacts`` → its key prefix under the server's destination."""
    assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri
    return "proxied/" + urlparse(artifact_uri).path.strip("/") + "/"


def test_dag_on_a_two_node_ray_cluster_with_mlflow_server_and_s3_store(mlflow_server, s3_bucket, tmp_path,
                                                                       monkeypatch, cluster):
    import boto3
    import ray
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from srcompress.cli import app

    endpoint, bucket = s3_bucket
    uid = uuid.uuid4().hex[:8]
    name, prefix = f"topology-{uid}", f"store-{uid}"
    work = tmp_path / "w"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    assert not ray.is_initialized()  # else the steps would reuse this session instead of joining the cluster
    watcher = None
    address, worker_pgid = cluster.address, cluster.worker_pgids[0]
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            deadline = time.monotonic() + 60
            while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            nodes = [n for n in ray.nodes() if n["Alive"]]
        finally:
            ray.shutdown()
        assert len(nodes) == 2, nodes
        head = next(n for n in nodes if "node:__internal_head__" in n["Resources"])
        worker = next(n for n in nodes if n is not head)
        raylets: dict[str, psutil.Process] = {}
        for p in psutil.process_iter(["name", "cmdline"]):
            for n in nodes:
                if p.info["name"] == "raylet" and f"--raylet_socket_name={n['RayletSocketName']}" in (p.info["cmdline"] or []):
                    raylets[n["NodeID"]] = p
        assert set(raylets) == {head["NodeID"], worker["NodeID"]}, raylets
        assert os.getpgid(raylets[worker["NodeID"]].pid) == worker_pgid  # the worker node is the worker `ray start`
        assert os.getpgid(raylets[head["NodeID"]].pid) != worker_pgid

        overrides = [o for o in DISTILL + EVALUATE if not o.startswith("registry.model_name=")] + [
            f"registry.model_name={name}", f"tracking.experiment={name}", f"tracking.uri={mlflow_server['url']}",
            f"store.uri=s3://{bucket}/{prefix}", f"store.endpoint_url={endpoint}", f"run.ray_address={address}",
            "search.num_workers=2", "distill.num_workers=2"]
        watcher = _RayletChildren(raylets)
        watcher.start()
        out = run_pipeline(load_config("tiny", overrides), work)
        watcher.halt.set()
        watcher.join(5)
        assert not ray.is_initialized()

        # -- the run finished, every step ran, the ranked steps on 2 ranks
        client = MlflowClient(mlflow_server["url"])
        assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
        assert out["model_version"] == f"models:/{name}/1"
        assert set(out["outcomes"].values()) == {"ran"}, out["outcomes"]
        runs = {r.info.run_name: r for r in client.search_runs(
            [out["experiment_id"]], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")}
        for step in RANKED:
            assert out["steps"][step]["counts"]["world_size"] == 2, step
            assert runs[step].data.params["world_size"] == "2", step
        assert runs["search_pruning"].data.tags["srcompress.world_size"] == "2"

        # -- the DeepSpeed ranks ran on both nodes, one of them the worker node's raylet's child
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            actors = [a for a in ray._private.state.actors().values() if "DeepSpeedRank" in a["ActorClassName"]]
        finally:
            ray.shutdown()
        jobs: dict[str, list[dict]] = {}
        for a in actors:
            jobs.setdefault(a["JobID"], []).append(a)
        summary = {j: [(a["Address"]["NodeID"][:8], a["Pid"]) for a in v] for j, v in jobs.items()}
        # one Ray session (job) for the whole run (infra/ray_cluster.ray_scope); one pair of ranks, one on each
        # node (1 CPU per node, one CPU per rank), kept by train_on_ray from the search through both stages
        assert len(jobs) == 1 and len(actors) == 2, summary
        per_node = [a["Address"]["NodeID"] for a in actors]
        assert sorted(per_node) == sorted([head["NodeID"], worker["NodeID"]]), summary
        for a in actors:
            assert watcher.seen.get(a["Pid"]) == a["Address"]["NodeID"], (summary, watcher.seen)

        # -- degradation shards and evaluation scoring were Ray tasks too; some ran in worker-node processes
        for step, field, total in (("degrade", "computed_on", out["steps"]["degrade"]["counts"]["shards"]),
                                   ("evaluate", "scored_on", None)):
            on = out["steps"][step]["extra"][field]
            assert total is None or sum(on.values()) == total, (step, on)
            node_of = {w: w.split("/")[0] for w in on}
            assert set(node_of.values()) <= {head["NodeID"][:12], worker["NodeID"][:12]}, (step, on)
            by_worker = [w for w, n in node_of.items() if n == worker["NodeID"][:12]]
            assert by_worker, (step, on)
            assert all(watcher.seen.get(int(w.split("/")[1])) == worker["NodeID"] for w in by_worker), \
                (step, on, watcher.seen)

        # -- the store is the S3 bucket, nothing on local disk
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        keys = _s3_keys(s3, bucket, prefix + "/")
        for part in ("search/", "distill/", "degrade/"):
            assert any(k.startswith(f"{prefix}/{part}") for k in keys), (part, keys[:20])
        assert out["store"] == f"s3://{bucket}/{prefix}"
        for step in STEPS:
            assert out["steps"][step]["uri"].startswith(f"s3://{bucket}/{prefix}/"), (step, out["steps"][step]["uri"])
        local = work / "store"
        assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()], list(local.rglob("*"))[:10]

        # -- MLflow's artifacts are S3 objects under the server's --artifacts-destination
        mb = mlflow_server["bucket"]
        assert client.get_experiment(out["experiment_id"]).artifact_location.startswith("mlflow-artifacts:")
        expected = {out["parent_run_id"]: "config/resolved.yaml",
                    runs["search_pruning"].info.run_id: "search/result.json",
                    runs["distill_pixel"].info.run_id: "distill/stage2_grid.png"}
        for run_id, path in expected.items():
            art = _proxied_prefix(client.get_run(run_id).info.artifact_uri)
            assert art + path in _s3_keys(s3, mb, art), (run_id, path, _s3_keys(s3, mb, art)[:20])
        mv = client.get_model_version(name, "1")
        model_id = mv.model_id or mv.source.removeprefix("models:/")  # the REST reply may leave model_id unset
        model_art = _proxied_prefix(client.get_logged_model(model_id).artifact_location)
        assert model_art + "MLmodel" in _s3_keys(s3, mb, model_art)

        # -- the lineage, from the MLflow server, verified against the S3 store
        res = CliRunner().invoke(app, ["lineage", f"models:/{name}@candidate", "--tracking-uri", mlflow_server["url"],
                                       "--verify"], env={"SRCOMPRESS_S3_ENDPOINT_URL": endpoint})
        assert res.exit_code == 0, res.output
        for step in STEPS:
            assert step in res.output, (step, res.output)
        assert f"store s3://{bucket}/{prefix}" in res.output
        assert "verify: every recorded object is present and unchanged" in res.output
    finally:
        if watcher is not None:
            watcher.halt.set()
        if ray.is_initialized():
            ray.shutdown()


def test_encode_and_scoring_on_a_two_node_ray_cluster_match_local(tmp_path, upstream_store, cluster):
    """The module's cluster (a Ray head and a worker as separate ``ray start`` processes): degradation, the encode
    step and evaluation scoring run on it and give the bytes and numbers of a local run."""
    port = cluster.address.rsplit(":", 1)[1]
    local = run_pipeline(load_config("tiny", FAST), seed_workdir(upstream_store, tmp_path / "local"),
                         until="encode_latents")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, path in bundled_files(["sklearn", "skimage"])[:3]:
        shutil.copy(path, photos / name.split("/")[-1])
    EVAL = ["evaluate.models=[bicubic, teacher]", "evaluate.metrics=[psnr, ssim, fid]",
            "evaluate.items_per_task=1", "evaluate.efficiency.enabled=false", "evaluate.data.center_crop=96"]
    here = run_evaluation(load_config("tiny", FAST + EVAL), tmp_path / "local", str(photos))
    # both "nodes" run on this machine: the local store is a filesystem they share
    # two encode actors there (one per node), one here: the latents must not depend on it
    cluster_cfg = load_config("tiny", FAST + ["encode.num_actors=2", f"run.ray_address=127.0.0.1:{port}",
                                              "run.shared_filesystem=true"])
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        # the teacher is the session upstream's (a cache hit); degradation and encoding run again, on the cluster
        remote = run_pipeline(cluster_cfg, seed_workdir(upstream_store, tmp_path / "remote",
                                                        recompute=("degrade", "encode_latents")), until="encode_latents")
        assert not ray.is_initialized()
        # evaluation scoring on the cluster: 3 images, 1 per task, bicubic and teacher → 6 Ray tasks
        scored = run_evaluation(load_config("tiny", FAST + EVAL + [f"run.ray_address=127.0.0.1:{port}",
                                                                  "run.shared_filesystem=true"]),
                                tmp_path / "remote", str(photos))
        ray.init(address=f"127.0.0.1:{port}", include_dashboard=False, log_to_driver=False)
        try:
            nodes = {n["NodeID"][:12]: "node:__internal_head__" in n["Resources"] for n in ray.nodes() if n["Alive"]}
        finally:
            ray.shutdown()
    assert remote["outcomes"]["bootstrap_teacher"] == "cached" and remote["outcomes"]["encode_latents"] == "ran"
    # the degradation shards were Ray tasks on the cluster (both nodes hold 1 CPU: the worker node got some)
    # and produced the local thread pool's bytes
    assert remote["steps"]["degrade"]["digest"] == local["steps"]["degrade"]["digest"]
    assert not local["steps"]["degrade"]["extra"]["computed_on"]
    on = remote["steps"]["degrade"]["extra"]["computed_on"]
    assert sum(on.values()) == remote["steps"]["degrade"]["counts"]["shards"]
    assert any(not nodes[w.split("/")[0]] for w in on), (on, nodes)
    # so was scoring, with the numbers of the driver's own pass (FID: the slices' features, in item order)
    assert not here["steps"]["evaluate"]["extra"]["scored_on"]
    tasks_on = scored["steps"]["evaluate"]["extra"]["scored_on"]
    assert sum(tasks_on.values()) == 6 and any(not nodes[w.split("/")[0]] for w in tasks_on), (tasks_on, nodes)
    assert set(scored["metrics"]) == set(here["metrics"]) and "teacher.fid" in here["metrics"]
    for k, v in here["metrics"].items():
        if "seconds" in k:
            continue  # wall time, not a score
        assert scored["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k  # 1 vs 2 torch threads
    assert remote["steps"]["encode_latents"]["digest"] == local["steps"]["encode_latents"]["digest"]
    assert torch.equal(_latents(remote)["teacher"], _latents(local)["teacher"])
