"""bootstrap_teacher and encode_latents through the flow: smoke, import, determinism, resume (the same on a 2-node Ray
cluster: tests/deploy/test_topology.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.config import ConfigError
from srcompress.infra.store import LocalStore
from srcompress.models.teachers import load_teacher, save_teacher
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from tests.upstream import FAST, seed_workdir

# One local Ray for the module's DAG runs (tests/conftest.py `module_ray`); the encode step on a 2-node cluster is
# tests/deploy/test_topology.py's.
pytestmark = pytest.mark.usefixtures("prefect_harness", "module_ray")

def _latents(summary: dict) -> dict[str, torch.Tensor]:
    m = summary["steps"]["encode_latents"]
    index = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    store = LocalStore(Path(m["uri"].removeprefix("file://")).parents[2])
    out: dict[str, list] = {}
    for sh in index["shards"]:
        for k, v in load(store.get_bytes(sh["key"], sh["sha256"])).items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def _sans_index_sha(steps: dict) -> dict:
    return {k: {**m, "extra": {f: v for f, v in m["extra"].items() if f != "index_sha256"}} for k, m in steps.items()}


@pytest.mark.slow
def test_bootstrap_and_encode_end_to_end(tmp_path, upstream_summary):
    """The session upstream's first run (FAST: bootstrap and encode computed there), then reruns on a copy."""
    first = upstream_summary
    steps = {k: first["steps"][k] for k in ("degrade", "degrade_holdout", "bootstrap_teacher", "encode_latents")}
    assert set(first["steps"]) == {*steps, "analyse_redundancy"}  # the summary file sorts its keys
    assert set(first["outcomes"].values()) == {"ran"} and len(first["outcomes"]) == 5
    t = steps["bootstrap_teacher"]
    assert t["kind"] == "teacher" and t["inputs"] == {"pairs": steps["degrade"]["digest"],
                                                      "holdout": steps["degrade_holdout"]["digest"]}
    assert t["extra"]["kind"] == "sd3" and t["extra"]["prunable_blocks"] == 2
    assert {"psnr_y_teacher", "psnr_y_bicubic"} <= set(t["extra"]["metrics"])
    e = steps["encode_latents"]
    assert e["counts"] == {"latents": 6, "shards": 2}
    assert e["inputs"] == {"pairs": steps["degrade"]["digest"], "teacher": t["digest"]}
    assert e["extra"]["convention"]["mode"] == "mean" and e["extra"]["dtype"] == "float32"
    assert e["extra"]["vae_digest"] == t["extra"]["vae_digest"] and len(t["extra"]["vae_digest"]) == 64
    assert e["extra"]["teacher_digest"] == t["digest"]
    lat = _latents(first)
    channels = load_config("tiny", FAST).teacher.bootstrap.latent_channels
    assert lat["lq"].shape == lat["hq"].shape == lat["teacher"].shape == (6, channels, 64, 64)  # identity VAE: factor 1

    # the cached teacher output equals a fresh forward pass of the published teacher on the cached LQ latent
    from srcompress.infra.manifest import Manifest
    from srcompress.tasks.common.teachers import fetch_teacher_folder

    teacher = load_teacher(fetch_teacher_folder(LocalStore(Path(first["store"].removeprefix("file://"))),
                                                Manifest.model_validate(t), tmp_path / "fresh"))
    with torch.no_grad():
        fresh = teacher.restore_latent(lat["lq"])
    assert torch.allclose(fresh, lat["teacher"], atol=1e-5) and not torch.allclose(fresh, lat["lq"], atol=1e-3)

    client = MlflowClient(first["tracking_uri"])
    runs = client.search_runs([first["experiment_id"]], f"tags.mlflow.parentRunId = '{first['parent_run_id']}'")
    assert {r.data.tags["srcompress.step"] for r in runs} == {"degrade", "degrade-holdout", "bootstrap_teacher",
                                                             "encode_latents", "analyse_redundancy"}
    boot = next(r for r in runs if r.data.tags["srcompress.step"] == "bootstrap_teacher")
    assert "psnr_y_teacher" in boot.data.metrics and "psnr_y_bicubic" in boot.data.metrics
    # each step run carries its plots: the teacher's training curves, a look at the degraded pairs
    assert [a.path for a in client.list_artifacts(boot.info.run_id, "teacher")] == \
        ["teacher/metrics.json", "teacher/training.png"]
    deg = next(r for r in runs if r.info.run_name == "degrade")
    assert any(a.path.endswith("-preview.png") for a in client.list_artifacts(deg.info.run_id, "degrade"))

    # the reruns, in a copy of that run's store (its URIs rewritten to the copy: compare with those)
    cfg = load_config("tiny", FAST)
    seed_workdir(Path(first["store"].removeprefix("file://")), tmp_path / "w")
    store = LocalStore(tmp_path / "w" / "store")
    moved = json.loads(json.dumps(steps).replace(first["store"].rstrip("/") + "/", store.root_uri.rstrip("/") + "/"))
    e = moved["encode_latents"]
    second = run_pipeline(cfg, tmp_path / "w", until="encode_latents")
    # nothing recomputed, identical manifests (an index's sha256 changed with the URIs in it: the copy's own)
    assert _sans_index_sha(second["steps"]) == _sans_index_sha(moved)
    assert set(second["outcomes"].values()) == {"cached"}

    # resume: delete one latent shard → only it is recomputed, byte-identical
    index = json.loads(Path(e["uri"].removeprefix("file://")).read_text())
    store.delete(index["shards"][1]["key"])
    third = run_pipeline(cfg, tmp_path / "w", until="encode_latents")
    assert third["steps"]["encode_latents"]["digest"] == e["digest"]
    client = MlflowClient(third["tracking_uri"])
    enc = next(r for r in client.search_runs([third["experiment_id"]],
                                            f"tags.mlflow.parentRunId = '{third['parent_run_id']}'")
               if r.data.tags["srcompress.step"] == "encode_latents")
    assert (enc.data.metrics["shards_computed"], enc.data.metrics["shards_cached"]) == (1, 1)

    # a teacher load setting re-runs encode (not the bootstrap); a placement setting re-runs nothing
    other = run_pipeline(load_config("tiny", FAST + ["teacher.timestep=500"]), tmp_path / "w", until="encode_latents")
    assert other["outcomes"]["bootstrap_teacher"] == "cached" and other["outcomes"]["encode_latents"] == "ran"
    assert other["steps"]["encode_latents"]["digest"] != e["digest"]
    placed = run_pipeline(load_config("tiny", FAST + ["encode.num_actors=2"]), tmp_path / "w", until="encode_latents")
    assert placed["outcomes"]["encode_latents"] == "cached"
    assert {k: v for k, v in placed["steps"]["encode_latents"].items() if k != "run_id"} == \
        {k: v for k, v in e.items() if k != "run_id"}  # run_id: the resume above re-recorded the step


@pytest.mark.slow
def test_encode_is_deterministic_across_actor_counts_and_uses_the_real_teacher(tmp_path, upstream_store,
                                                                             upstream_summary):
    assert FAST.count("encode.num_actors=1") == 1  # the session upstream encoded with 1 actor; here: 2
    a = seed_workdir(upstream_store, tmp_path / "a", recompute=("encode_latents",))
    two = run_pipeline(load_config("tiny", FAST + ["encode.num_actors=2"]), a, until="encode_latents")
    assert two["outcomes"]["bootstrap_teacher"] == "cached" and two["outcomes"]["encode_latents"] == "ran"
    assert two["steps"]["encode_latents"]["digest"] == upstream_summary["steps"]["encode_latents"]["digest"]
    lat = _latents(two)
    folder = tmp_path / "a" / "scratch" / "teachers-cache"
    teacher = load_teacher(next(p for p in folder.iterdir() if p.is_dir()))
    with torch.no_grad():
        assert torch.allclose(teacher.restore_latent(lat["lq"][:2]), lat["teacher"][:2], atol=1e-5)


@pytest.mark.slow
def test_import_a_local_teacher_folder(tmp_path, upstream_workdir):
    folder = save_teacher(tiny_sd3_teacher(seed=3, num_layers=2), tmp_path / "my-teacher")
    cfg = load_config("tiny", FAST + [f"teacher.source={folder}"])
    out = run_pipeline(cfg, upstream_workdir, until="encode_latents")
    t = out["steps"]["bootstrap_teacher"]
    assert t["extra"]["mode"] == "import" and t["uri"] == folder.resolve().as_uri()
    assert out["steps"]["encode_latents"]["inputs"]["teacher"] == t["digest"]
    # a teacher published to the store (e.g. by another pipeline) is imported by its index URI
    from srcompress.tasks.common.teachers import publish_folder

    store = LocalStore(tmp_path / "w" / "store")
    uri, digest, _ = publish_folder(store, folder, "teachers/mine")
    again = run_pipeline(load_config("tiny", FAST + [f"teacher.source={uri}"]), tmp_path / "w", until="encode_latents")
    assert again["steps"]["bootstrap_teacher"]["digest"] == digest == t["digest"]
    assert again["steps"]["encode_latents"]["digest"] == out["steps"]["encode_latents"]["digest"]
    missing = load_config("tiny", FAST + [f"teacher.source={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match=r"teacher\.source: .*nope is not a folder"):  # before any work
        run_pipeline(missing, tmp_path / "w2", until="bootstrap_teacher")
