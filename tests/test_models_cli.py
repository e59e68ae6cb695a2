"""``srcompress models list | promote | rollback`` against a real ``mlflow server`` (fixture ``mlflow_server``,
artifacts proxied to the loopback S3 server): aliases move, every move is recorded, and bad requests fail with
a message and exit code 2 without moving anything."""

from __future__ import annotations

import json
import uuid

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.infra import registry
from srcompress.infra.registry import rollback_target
from tests.conftest import free_port

# the topology test starts the same session server on its worker: share it rather than start a second one
pytestmark = [pytest.mark.xdist_group("two_node")]


def _versions(url: str, name: str, n: int) -> MlflowClient:
    """``n`` versions of ``name`` whose source is an artifact of one real run (what MLflow's server accepts)."""
    client = MlflowClient(url)
    exp = client.create_experiment(f"models-cli-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    client.log_text(run.info.run_id, "weights", "student/student.json")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    for i in range(n):
        client.create_model_version(name, f"{run.info.artifact_uri}/student", run_id=run.info.run_id,
                                    tags={"gate.decision": "candidate", "metrics.student.psnr": f"{30 + i}"})
    return client


def _cli(*args: str):
    return CliRunner().invoke(app, ["models", *args])


def _champion(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_promote_and_rollback_move_the_alias_and_record_every_move(mlflow_server):
    url, name = mlflow_server["url"], f"m-{uuid.uuid4().hex[:8]}"
    client = _versions(url, name, 3)
    # what the register step's gate does for versions 1 and 2
    registry.move_alias(url, name, "champion", "1", "gate", "no champion yet")
    registry.move_alias(url, name, "champion", "2", "gate", "psnr +0.2 dB")
    res = _cli("promote", name, "3", "--reason", "A/B test won", "--tracking-uri", url)
    assert res.exit_code == 0, res.output
    assert "version 2 → 3" in res.output and _champion(client, name) == "3"
    assert client.get_model_version(name, "3").tags["alias.champion.set_by"].endswith(": A/B test won")
    res = _cli("list", name, "--tracking-uri", url, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["version"], r["aliases"]) for r in rows] == [("3", ["champion"]), ("2", []), ("1", [])]
    assert rows[0]["metrics"] == {"student.psnr": "32"}
    res = _cli("list", name, "--tracking-uri", url)
    assert f"{name} v3  [champion]  gate=candidate" in res.output
    # rollbacks walk back one promotion each, through the manual one and the gate's
    for expect in ("2", "1"):
        res = _cli("rollback", name, "--tracking-uri", url)
        assert res.exit_code == 0, res.output
        assert _champion(client, name) == expect and f"→ {expect} (rollback)" in res.output
    res = _cli("rollback", name, "--tracking-uri", url)
    assert res.exit_code == 2 and "nothing to roll back to" in res.output and _champion(client, name) == "1"
    history = json.loads(client.get_registered_model(name).tags["srcompress.alias_history.champion"])
    assert [(e["how"], e["from"], e["version"]) for e in history] == [
        ("gate", "", "1"), ("gate", "1", "2"), ("manual", "2", "3"), ("rollback", "3", "2"), ("rollback", "2", "1")]
    assert all(e["at"] and e["by"] for e in history)
    # promoting the version the alias already holds records nothing
    assert "already points at version 1" in _cli("promote", name, "1", "--tracking-uri", url).output
    assert len(json.loads(client.get_registered_model(name).tags["srcompress.alias_history.champion"])) == 5


def test_bad_requests_fail_clearly_and_move_nothing(mlflow_server, monkeypatch):
    url, name = mlflow_server["url"], f"m-{uuid.uuid4().hex[:8]}"
    client = _versions(url, name, 2)
    registry.move_alias(url, name, "champion", "1", "gate", "no champion yet")
    res = _cli("promote", name, "9", "--tracking-uri", url)
    assert res.exit_code == 2 and "has no version '9'" in res.output and _champion(client, name) == "1"
    res = _cli("promote", name, "latest", "--tracking-uri", url)
    assert res.exit_code == 2 and "must be a number" in res.output
    res = _cli("list", "no-such-model", "--tracking-uri", url)
    assert res.exit_code == 2 and "no-such-model" in res.output
    # an alias moved outside srcompress (the MLflow UI): rollback refuses to guess
    client.set_registered_model_alias(name, "champion", "2")
    res = _cli("rollback", name, "--tracking-uri", url)
    assert res.exit_code == 2 and "moved elsewhere" in res.output and _champion(client, name) == "2"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = _cli("list")
    assert res.exit_code == 2 and "no tracking URI" in res.output
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once rather than back off for minutes
    dead = f"http://127.0.0.1:{free_port()}"
    res = _cli("list", name, "--tracking-uri", dead)
    assert res.exit_code == 3 and dead in res.output


def test_rollback_target_replays_promotions_as_a_stack():
    ev = lambda v, how="gate": {"version": v, "how": how}  # noqa: E731
    assert rollback_target([]) == (None, None)
    assert rollback_target([ev("1")]) == ("1", None)
    assert rollback_target([ev("1"), ev("2"), ev("3", "manual")]) == ("3", "2")
    assert rollback_target([ev("1"), ev("2"), ev("3"), ev("2", "rollback")]) == ("2", "1")
    assert rollback_target([ev("1"), ev("2"), ev("1", "rollback"), ev("4")]) == ("4", "1")
