"""``srcompress config show [--docs]``, ``srcompress evaluate --list-metrics`` and ``srcompress assets show|fetch``:
each asserts what the command reports against the thing it reports on (the typed config, the metric registry,
the asset directory and the pinned sdist)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import yaml
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.config import SrConfig, load_config
from srcompress.infra import assets
from srcompress.infra.config import field_docs

runner = CliRunner()

# sha256 of basicsr 1.4.2's niqe_pris_params.npz: pinned here independently of the sdist pin in infra/assets.py
NIQE_NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_config_show_prints_the_resolved_config_and_docs_lists_every_key_with_its_description():
    docs = field_docs(SrConfig)
    plain = _ok(["config", "show", "--config", "tiny", "--set", "degrade.crop_size=96"]).stdout
    documented = _ok(["config", "show", "--config", "tiny", "--set", "degrade.crop_size=96", "--docs"]).stdout
    cfg = load_config("tiny", ["degrade.crop_size=96"])
    shown = yaml.safe_load(plain)  # the '#' lines are comments
    assert shown["degrade"]["crop_size"] == 96 and shown == cfg.model_dump(mode="json")
    hashes = [f"# config hash: {cfg.config_hash()}"] + [f"# {s} hash: {getattr(cfg, s).config_hash()}"
                                                         for s in SrConfig.model_fields]
    assert [line for line in plain.splitlines() if line.startswith("#")] == hashes  # no docs without --docs
    extra = documented.splitlines()[len(plain.splitlines()):]
    assert documented.startswith(plain) and extra == [f"# {key}: {text}" for key, text in docs.items()]
    assert all(docs.values()), f"undocumented keys: {[k for k, v in docs.items() if not v]}"
    assert len(docs) > 200 and "distill.phase_ablation" in docs and "registry.champion_alias" in docs
    assert yaml.safe_load(documented) == shown  # the docs are comments: the YAML is unchanged


def test_config_show_rejects_an_unknown_key_by_name():
    result = runner.invoke(app, ["config", "show", "--config", "tiny", "--set", "degrade.crop_sise=96"])
    assert result.exit_code == 2 and "degrade.crop_sise: unknown key" in result.output


def test_evaluate_list_metrics_lists_the_registry_with_what_builds_here():
    from srcompress.models.iqa import MetricUnavailable, build_metric, metric_names
    from srcompress.tasks.evaluate.step import metric_env

    # metrics=[psnr]: NIQE's parameters are not located (no fetch), so the unavailable path shows too
    overrides = ["evaluate.metrics=[psnr]", "evaluate.st_lpips_net=vgg"]
    args = ["evaluate", "--config", "tiny", "--list-metrics"] + [x for o in overrides for x in ("--set", o)]
    out = _ok(args).stdout
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    assert [name for name, _ in rows] == list(metric_names())
    env = metric_env(load_config("tiny", overrides).evaluate)
    for name, status in rows:
        try:
            m = build_metric(name, env)
        except MetricUnavailable as exc:
            assert status.strip() == str(exc), name
            continue
        better = "lower" if m.info.lower_better else "higher"
        assert status == f"ok  ({m.info.mode}, {better} is better, {m.info.backend})", name
    status = dict(rows)
    assert status["psnr"].startswith("ok") and status["ssim"].startswith("ok")
    assert status["st_lpips"] == "ok  (FR, lower is better, stlpips-pytorch/vgg)"  # the config's convention
    assert not status["niqe"].startswith("ok") and "niqe_pris_params.npz" in status["niqe"]


def test_assets_show_and_fetch_materialise_the_pinned_niqe_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("SRCOMPRESS_ASSETS", str(tmp_path / "assets"))
    monkeypatch.delenv("SRCOMPRESS_BASICSR_SDIST", raising=False)
    dest = tmp_path / "assets" / assets.NIQE_FILE
    source = f"(source: {assets.NIQE_MEMBER} in {assets.BASICSR_SDIST_URL} (sha256 {assets.BASICSR_SDIST_SHA256}))"
    assert _ok(["assets", "show"]).stdout.strip() == f"{assets.NIQE_FILE}: missing at {dest} {source}"

    # a tampered sdist is refused by its digest: exit 4, nothing written
    bad = tmp_path / "basicsr-1.4.2.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        data = b"not the parameters"
        info = tarfile.TarInfo(assets.NIQE_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("SRCOMPRESS_BASICSR_SDIST", str(bad))
    result = runner.invoke(app, ["assets", "fetch"])
    assert result.exit_code == 4 and "sha256" in result.output and assets.BASICSR_SDIST_SHA256[:16] in result.output
    assert not dest.exists()

    # the pinned sdist from the package registry: its NIQE member lands in the asset directory
    monkeypatch.delenv("SRCOMPRESS_BASICSR_SDIST")
    result = runner.invoke(app, ["assets", "fetch"])
    if result.exit_code == 4 and "could not be read" in result.output:
        pytest.fail(f"the package registry is not reachable: {result.output}")
    assert result.exit_code == 0 and result.stdout.strip() == f"niqe: {dest}"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == NIQE_NPZ_SHA256
    assert set(assets.check_niqe_params(dest.read_bytes())) >= {"mu_pris_param", "cov_pris_param"}
    assert _ok(["assets", "show"]).stdout.strip() == f"{assets.NIQE_FILE}: present at {dest} {source}"


def test_version_prints_the_package_and_code_version():
    from importlib.metadata import version

    from srcompress.infra.manifest import code_version

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"srcompress {version('srcompress')} (code {code_version('srcompress')})"


def test_a_bad_until_fails_before_any_process_or_server_starts(monkeypatch):
    import srcompress.cli as cli

    def started(*a, **k):
        raise AssertionError("the watchdog (and so Prefect and Ray) started before --until was checked")

    monkeypatch.setattr(cli, "_watchdog", started)
    monkeypatch.setattr(cli, "_load", started)  # not even the config is read first
    res = CliRunner().invoke(app, ["run", "--config", "configs/tiny.yaml", "--until", "nope"])
    assert res.exit_code == 2 and "--until must be one of: degrade, bootstrap_teacher" in res.output


def test_shell_completion_is_offered():
    res = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in res.output and "--show-completion" in res.output


def test_end_of_run_lines_name_the_version_the_gate_check_that_decided_and_how_to_serve_it():
    from srcompress.cli import registered_lines

    gate = {"promote": False, "reason": "cannot compare with champion 4: piqe (missing on this version)",
            "checks": [{"metric": "psnr", "new": 24.5, "champion": 24.4, "worse_by": -0.1, "tolerance": 0.05,
                        "pass": True}, {"metric": "piqe", "pass": False, "missing_on": "this version"}]}
    result = {"tracking_uri": "sqlite:///w/mlflow.db",
              "steps": {"register": {"uri": "models:/m/5", "extra": {"aliases": ["candidate"], "gate": gate}}}}
    assert registered_lines(result) == [
        "registered: models:/m/5 (aliases: candidate)",
        "gate:   not promoted — cannot compare with champion 4: piqe (missing on this version) "
        "[piqe missing on this version]",
        "serve:  MLFLOW_TRACKING_URI=sqlite:///w/mlflow.db mlflow models serve -m models:/m/5 --env-manager local -p 5001",
        "load:   MLFLOW_TRACKING_URI=sqlite:///w/mlflow.db python -c \"import mlflow; "
        "m = mlflow.pyfunc.load_model('models:/m/5')\""]
    assert registered_lines({"steps": {}}) == []  # --until before register: nothing to say
