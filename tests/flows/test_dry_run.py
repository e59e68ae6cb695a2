"""`srcompress run --dry-run` and `srcompress explain STEP`: cached or would run, and why — computing and recording
nothing (infra/dryrun.py)."""

from __future__ import annotations

from mlflow import MlflowClient
from typer.testing import CliRunner

from srcompress.cli import app
from tests.flows.test_compress import SMALL


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_dry_run_names_the_changed_field_and_the_steps_it_invalidates(tmp_path):
    work = tmp_path / "w"
    base = ["--config", "tiny", "--workdir", str(work), *sum((["--set", s] for s in SMALL), [])]
    _cli("run", "--until", "degrade", *base)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs_before = len(client.search_runs(["1"], max_results=1000))
    cache_before = sorted(p.name for p in (work / "store" / "cache").rglob("*.json"))

    out = _cli("run", "--dry-run", "--until", "degrade", *base)
    assert "degrade                  cached" in out and "everything is cached" in out

    out = _cli("run", "--dry-run", *base, "--set", "degrade.crops_per_image=3")
    assert "degrade                  would run" in out
    assert "config degrade.crops_per_image: 2 → 3" in out
    assert "code version" not in out and "input sources" not in out  # only what changed is named
    after = out.split("not looked up (they depend on what degrade produces):")[1]
    assert [s.strip() for s in after.strip().splitlines()[0].split(",")] == [
        "bootstrap_teacher", "compress_vae", "encode_latents", "analyse_redundancy", "search_pruning",
        "distill_latent", "distill_pixel", "evaluate", "register"]  # compress_vae: on in configs/tiny.yaml

    out = _cli("explain", "bootstrap_teacher", *base, "--set", "degrade.crops_per_image=3")
    assert "bootstrap_teacher: not looked up: degrade comes before it and would run" in out
    out = _cli("explain", "bootstrap_teacher", *base)  # degrade cached: the teacher is looked up
    assert "bootstrap_teacher        would run" in out and "never computed in this store" in out
    assert "degrade " not in out  # explain shows the step asked about

    # nothing was computed or recorded by the dry runs
    assert len(client.search_runs(["1"], max_results=1000)) == runs_before
    assert sorted(p.name for p in (work / "store" / "cache").rglob("*.json")) == cache_before
