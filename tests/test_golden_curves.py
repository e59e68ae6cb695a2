"""Golden loss curves (torchtitan-style): the first logged points of the teacher bootstrap, the mask search
and distillation stage 1 on the fast test config, fixed seeds, against ``tests/golden/loss_curves.json``. The
curves are read from the session's runs: the upstream (bootstrap) and the two-stage distillation (search and
stage 1, tests/conftest.py `two_stage`), so this test computes nothing of its own.

A change in training numerics — a loss term, its weight, the optimiser or its hyper-parameters, the data
order, an initialisation — moves these points and fails here, even when every behavioural test still passes.
A deliberate change regenerates the file and shows the diff in review:

    SRCOMPRESS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -n 0 tests/test_golden_curves.py

Tolerance: 1e-4 relative. Runs on the same machine are bit-identical (the kill tests compare digests); the
slack covers BLAS reduction order on another CPU, far below what a changed recipe moves (the note of the change
that added this file has the measured sensitivities).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tasks.test_distill import TWO_STAGE, shared_run

# on the worker that builds the session's two-stage run (its xdist group)
pytestmark = [pytest.mark.slow, shared_run]

GOLDEN = Path(__file__).parent / "golden" / "loss_curves.json"
RTOL = 1e-4
CURVES = TWO_STAGE


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _step_run(client: MlflowClient, experiment_id: str, step: str, parent: str | None = None):
    query = f"tags.`srcompress.step` = '{step}'" + (f" and tags.mlflow.parentRunId = '{parent}'" if parent else "")
    runs = [r for r in client.search_runs([experiment_id], query) if r.data.tags.get("srcompress.cache_hit") != "True"]
    assert len(runs) == 1, (step, len(runs))
    return runs[0]


def measured_curves(upstream_store: Path, out: dict) -> dict[str, list[float]]:
    # the bootstrap ran once for the session: its curves are in the session upstream's own tracking database
    up = MlflowClient(f"sqlite:///{upstream_store.parent / 'mlflow.db'}")
    exp = up.get_experiment_by_name("srcompress") or up.search_experiments()[0]
    boot = _step_run(up, exp.experiment_id, "bootstrap_teacher")
    assert out["outcomes"]["search_pruning"] == "ran" and out["outcomes"]["distill_latent"] == "ran"
    client = MlflowClient(out["tracking_uri"])
    search = _step_run(client, out["experiment_id"], "search_pruning", out["parent_run_id"])
    stage1 = _step_run(client, out["experiment_id"], "distill_latent", out["parent_run_id"])
    return {"bootstrap.vae_loss": _history(up, boot.info.run_id, "vae_loss"),
            "bootstrap.restorer_loss": _history(up, boot.info.run_id, "restorer_loss"),
            "search.loss": _history(client, search.info.run_id, "loss"),
            "stage1.loss": _history(client, stage1.info.run_id, "stage1.loss")}


def test_loss_curves_match_the_golden_points(upstream_store, two_stage):
    got = measured_curves(upstream_store, two_stage[2])
    assert all(len(v) >= 2 for v in got.values()), got  # at least one point after an optimiser step
    if os.environ.get("SRCOMPRESS_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"rtol": RTOL, "config": CURVES, "curves": got}, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert want["config"] == CURVES, "the fast config changed: regenerate the golden curves (module docstring)"
    assert set(got) == set(want["curves"])
    for name, points in want["curves"].items():
        assert len(got[name]) == len(points), name
        assert got[name] == pytest.approx(points, rel=RTOL), name
