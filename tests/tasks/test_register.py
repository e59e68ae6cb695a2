"""register: the final student as an MLflow model version (pyfunc) with lineage tags, aliases and the
promotion gate; the pyfunc loads with MLflow's own API and serves over HTTP with ``mlflow models serve``.

The gate's branches are unit-tested on tags alone (fast, no pipeline, realistic tolerances); the pipeline tests
check that the register step applies the decision to MLflow aliases and tags."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from srcompress.cli import registered_lines
from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.tasks.register.config import GateConfig
from srcompress.tasks.register.gate import gate_decision
from srcompress.tasks.register.step import headline_tags
from tests.conftest import free_port, wait_http
from tests.tasks.test_distill import TWO_STAGE, _folder, shared_run

EVALUATE = ["evaluate.models=[bicubic, teacher, pruned, student]", "evaluate.metrics=[psnr, st_lpips, piqe]",
            "evaluate.data.center_crop=64", "evaluate.efficiency.enabled=false", "evaluate.grid_images=0",
            "registry.model_name=sr-test"]
# The session's two-stage distillation (tests/conftest.py `two_stage`) then evaluation and registration: its store
# is copied, so the search and both stages are cache hits and only evaluate and register run here.
REGISTER = TWO_STAGE + EVALUATE


def pipeline(test):
    """The pipeline tests share the module's `registered` run, which starts from the session's `two_stage` run:
    under xdist they run on that run's worker, one after another (a module fixture is rebuilt whenever a worker
    switches modules: measured 3 builds of ~2 min each)."""
    for mark in (shared_run, pytest.mark.usefixtures("module_ray"), pytest.mark.slow):
        test = mark(test)
    return test

# -- the promotion gate on tags alone ---------------------------------------------------------------------------
GATE = GateConfig()  # the shipped tolerances: psnr 0.05 dB, st_lpips 0.005, piqe 1.0, retention 0.05
LOWER_BETTER = {"psnr": False, "st_lpips": True, "piqe": True}


def _version(data: str = "evalset-a", retention: float | None = 0.9, **metrics: float | None) -> dict:
    """A version's tags as the register step writes them (``headline_tags``), one student per version."""
    values = {"psnr": 30.0, "st_lpips": 0.20, "piqe": 40.0} | metrics
    ret = {"metrics": {m: {"lower_better": lb} for m, lb in LOWER_BETTER.items()},
           "rows": [] if retention is None else [{"model": "student", "metric": "psnr", "retention": retention}]}
    tags = headline_tags({f"student.{m}": v for m, v in values.items() if v is not None}, ret)
    return tags | {"lineage.evaluate.digest": "eval-" + data, "lineage.eval_data.digest": data}


def _gate(new: dict, champ: dict | None = None) -> dict:
    return gate_decision(GATE, new, champ, None if champ is None else "1", "2")


def test_gate_promotes_the_first_version():
    d = _gate(_version())
    assert d["promote"] and d["reason"] == "no champion yet"


def test_gate_higher_is_better_at_the_shipped_tolerance():
    champ = _version(psnr=30.0)
    assert _gate(_version(psnr=30.5), champ)["promote"]  # better
    assert _gate(_version(psnr=29.97), champ)["promote"]  # 0.03 dB worse: within 0.05
    d = _gate(_version(psnr=29.9), champ)  # 0.1 dB worse
    assert not d["promote"] and d["reason"] == "worse than champion 1 on psnr"
    check = next(c for c in d["checks"] if c["metric"] == "psnr")
    assert check["worse_by"] == pytest.approx(0.1) and check["tolerance"] == 0.05 and check["pass"] is False


@pytest.mark.parametrize("metric, champ_value, better, within, beyond", [
    ("st_lpips", 0.20, 0.15, 0.204, 0.21),  # tolerance 0.005
    ("piqe", 40.0, 30.0, 40.8, 42.0),  # tolerance 1.0
])
def test_gate_lower_is_better_at_the_shipped_tolerance(metric, champ_value, better, within, beyond):
    champ = _version(**{metric: champ_value})
    # a lower value is an improvement: read as higher-is-better it would be "worse" by far more than the tolerance
    assert _gate(_version(**{metric: better}), champ)["promote"]
    assert _gate(_version(**{metric: within}), champ)["promote"]
    d = _gate(_version(**{metric: beyond}), champ)
    assert not d["promote"] and d["reason"] == f"worse than champion 1 on {metric}"
    check = next(c for c in d["checks"] if c["metric"] == metric)
    assert check["worse_by"] == pytest.approx(beyond - champ_value)


def test_gate_refuses_a_version_missing_a_gated_metric():
    # An unmeasured metric is not "not worse": the gate must refuse and say which metric is missing where,
    # even when every metric it can compare is better.
    champ = _version()
    d = _gate(_version(psnr=31.0, st_lpips=None), champ)
    assert not d["promote"]
    assert "st_lpips (missing on this version)" in d["reason"] and d["reason"].startswith("cannot compare")
    assert {"metric": "st_lpips", "pass": False, "missing_on": "this version"} in d["checks"]
    d = _gate(_version(psnr=31.0), _version(piqe=None))  # the champion was scored without it
    assert not d["promote"] and "piqe (missing on the champion)" in d["reason"]
    d = _gate(_version(retention=None), champ)  # retention scored for the champion only
    assert not d["promote"] and "worst retention (missing on this version)" in d["reason"]
    assert _gate(_version(retention=None), _version(retention=None))["promote"]  # not scored for either: no check


def test_gate_worst_retention_at_the_shipped_tolerance():
    champ = _version(retention=0.90)
    assert _gate(_version(retention=0.86), champ)["promote"]  # 0.04 lower: within 0.05
    d = _gate(_version(retention=0.80), champ)
    assert not d["promote"] and d["reason"] == "worse than champion 1 on worst retention"


def test_gate_refuses_when_the_evaluation_sets_differ():
    # The docstring's rule: metrics are compared only on the same evaluation set (lineage.eval_data.digest),
    # so a better-looking number on another set is refused, as is a set that was not recorded.
    d = _gate(_version(data="evalset-b", psnr=35.0), _version(data="evalset-a"))
    assert not d["promote"] and "another evaluation set" in d["reason"] and d["checks"] == []
    unrecorded = {k: v for k, v in _version(psnr=35.0).items() if k != "lineage.eval_data.digest"}
    d = _gate(unrecorded, {k: v for k, v in _version().items() if k != "lineage.eval_data.digest"})
    assert not d["promote"] and "not recorded" in d["reason"]


def test_gate_refuses_an_unevaluated_version_and_passes_the_champion_itself():
    new = {k: v for k, v in _version().items() if k != "lineage.evaluate.digest"}
    d = _gate(new, _version())
    assert not d["promote"] and d["reason"] == "this version has no evaluation"
    d = gate_decision(GATE, _version(psnr=1.0), _version(), "2", "2")  # rerun of the champion's own version
    assert d["promote"] and d["reason"] == "already the champion"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, prefect_harness, two_stage):  # only the pipeline tests need these
    from tests.upstream import seed_workdir

    work = tmp_path_factory.mktemp("reg")  # every step up to distill_pixel is a cache hit here
    out = run_pipeline(load_config("tiny", REGISTER), seed_workdir(two_stage[1] / "store", work / "w"))
    assert {out["outcomes"][s] for s in ("search_pruning", "distill_latent", "distill_pixel")} == {"cached"}
    return work, out


@pipeline
def test_version_carries_the_whole_lineage_and_aliases(registered):
    _, out = registered
    reg = out["steps"]["register"]
    assert out["model_version"] == "models:/sr-test/1" and reg["extra"]["aliases"] == ["candidate", "champion"]
    assert out["prefect_flow_run_id"] and registered_lines(out)[:2] == [
        "registered: models:/sr-test/1 (aliases: candidate, champion)", "gate:   promoted to champion — no champion yet"]
    assert registered_lines(out)[2].endswith("mlflow models serve -m models:/sr-test/1 --env-manager local -p 5001")
    client = MlflowClient(out["tracking_uri"])
    mv = client.get_model_version_by_alias("sr-test", "candidate")
    assert str(mv.version) == "1" and str(client.get_model_version_by_alias("sr-test", "champion").version) == "1"
    tags = mv.tags
    for step in ("degrade", "bootstrap_teacher", "encode_latents", "analyse_redundancy", "search_pruning",
                 "distill_latent", "distill_pixel", "eval_data", "evaluate"):
        assert tags[f"lineage.{step}.digest"] == out["steps"][step]["digest"], step
        assert tags[f"lineage.{step}.run_id"] == out["steps"][step]["run_id"], step
    assert tags["lineage.dataset.digest"] == out["steps"]["degrade"]["inputs"]["sources"]
    assert tags["lineage.degrade.config_hash"] == out["steps"]["degrade"]["config_hash"]
    assert tags["lineage.bootstrap_teacher.vae_digest"] and tags["lineage.config_hash"] == out["config_hash"]
    assert "metrics.student.psnr" in tags and "metrics.teacher.st_lpips" in tags and tags["srcompress.code_version"]
    assert tags["gate.decision"] == "champion" and tags["gate.reason"] == "no champion yet"
    # the gate's promotion is in the alias history that `srcompress models rollback` replays
    history = json.loads(client.get_registered_model("sr-test").tags["srcompress.alias_history.champion"])
    assert [(e["version"], e["from"], e["how"], e["reason"]) for e in history] == [("1", "", "gate", "no champion yet")]
    assert tags["alias.champion.set_by"].startswith("gate at ")
    step_run = client.get_run(reg["run_id"]).data.metrics  # the headline numbers as the step run's metrics
    assert step_run["version"] == 1 and step_run["promoted_to_champion"] == 1
    assert step_run["student.psnr"] == pytest.approx(out["steps"]["evaluate"]["extra"]["metrics"]["student.psnr"])
    # idempotent: the same student and evaluation do not add a version
    again = run_pipeline(load_config("tiny", REGISTER), registered[0] / "w")
    assert again["model_version"] == "models:/sr-test/1"
    history = json.loads(client.get_registered_model("sr-test").tags["srcompress.alias_history.champion"])
    assert len(history) == 1  # and the rerun recorded no second move


@pipeline
def test_pyfunc_loads_and_reproduces_the_student(registered, monkeypatch):
    work, out = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", out["tracking_uri"])  # restored after the test (MLflow's own
    model = mlflow.pyfunc.load_model("models:/sr-test@champion")    # set_tracking_uri would leak it to later tests)
    lr = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    sr = model.unwrap_python_model().predict(None, lr)  # arrays go past the DataFrame signature
    assert sr.shape == (80, 96, 3) and sr.dtype == np.uint8
    from srcompress.models.student.student import load_student
    from srcompress.models.upscalers import DiffusionSR

    up = DiffusionSR(load_student(_folder(out, "distill_pixel", work / "fetch")), 4, color_fix="wavelet")
    with torch.no_grad():
        ref = up(torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None])
    ref = (ref[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.abs(sr.astype(int) - ref.astype(int)).max() <= 1
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="PNG")
    import pandas as pd

    df = model.predict(pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()]}))
    assert (df.loc[0, "height"], df.loc[0, "width"]) == (80, 96)


@pipeline
def test_version_carries_signature_example_code_and_pinned_requirements(registered, tmp_path):
    import importlib.metadata

    _, out = registered
    client = MlflowClient(out["tracking_uri"])
    source = client.get_model_version("sr-test", "1").source
    info = mlflow.models.get_model_info(source)
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.outputs.input_names() == ["image", "height", "width"]
    assert info.saved_input_example_info is not None
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "m"),
                                                tracking_uri=out["tracking_uri"])
    reqs = (tmp_path / "m" / "requirements.txt").read_text().split()
    # pinned to what ran here; srcompress itself travels as code, not as a requirement no index has
    assert f"torch=={importlib.metadata.version('torch')}" in reqs
    assert f"diffusers=={importlib.metadata.version('diffusers')}" in reqs
    assert not [r for r in reqs if r.startswith("srcompress")]
    code = tmp_path / "m" / "code"
    # the bundled code alone (first on sys.path, the installed package behind it) loads the student and
    # reproduces the registered model's prediction on the input example
    script = f"""
import sys, json, pandas as pd
sys.path.insert(0, {str(code)!r})
import mlflow
m = mlflow.pyfunc.load_model({local!r})
df = m.predict(pd.DataFrame({{"image": [json.load(open({str(tmp_path / "m" / "input_example.json")!r}))["data"][0][0]]}}))
mods = [n for n, mod in sys.modules.items() if n.startswith("srcompress") and getattr(mod, "__file__", None)]
outside = [n for n in mods if not sys.modules[n].__file__.startswith({str(code)!r})]
print(json.dumps({{"h": int(df.loc[0, "height"]), "outside": outside, "n": len(mods)}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": out["tracking_uri"]})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["h"] == 64 and got["outside"] == [] and got["n"] > 5


@pipeline
def test_teacher_searched_and_both_students_are_logged_models_linked_by_runs(registered):
    _, out = registered
    client = MlflowClient(out["tracking_uri"])
    steps = out["steps"]
    # this pipeline's step runs (cache hits included: a hit's manifest names the run that computed it, elsewhere)
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [out["experiment_id"]], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")}

    def model_of(step):  # the LoggedModel that the step's run output, found by its content digest
        outs = client.get_run(runs[step]).outputs.model_outputs
        models = [client.get_logged_model(o.model_id) for o in outs]
        hit = [m for m in models if m.tags.get("srcompress.sha256") == steps[step]["digest"]]
        assert len(hit) == 1, (step, [m.tags for m in models])
        assert hit[0].tags["srcompress.uri"] == steps[step]["uri"] and hit[0].status == "READY"
        return hit[0].model_id

    def inputs_of(step):
        return {i.model_id for i in client.get_run(runs[step]).inputs.model_inputs or []}

    teacher, searched = model_of("bootstrap_teacher"), model_of("search_pruning")
    stage1, student = model_of("distill_latent"), model_of("distill_pixel")
    assert teacher in inputs_of("search_pruning")
    assert {teacher, searched} <= inputs_of("distill_latent")
    assert {teacher, stage1} <= inputs_of("distill_pixel")
    assert {teacher, student} <= inputs_of("evaluate")
    # the registered pyfunc is the register run's model output, made from the stage-2 student
    assert student in inputs_of("register")
    source = client.get_model_version("sr-test", "1").source
    registered_model = [o.model_id for o in client.get_run(runs["register"]).outputs.model_outputs]
    assert source.removeprefix("models:/") in registered_model


@pipeline
def test_mlflow_models_serve_answers_one_request(registered):
    _, out = registered
    port = free_port()
    bindir = os.path.dirname(sys.executable)  # the server execs uvicorn from the environment's bin/
    env = {**os.environ, "MLFLOW_TRACKING_URI": out["tracking_uri"], "PATH": f"{bindir}:{os.environ['PATH']}"}
    mlflow_bin = os.path.join(bindir, "mlflow")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/sr-test/1", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180)
        img = Image.fromarray((np.random.default_rng(1).random((16, 20, 3)) * 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(buf.getvalue()).decode()]]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            preds = json.loads(resp.read())["predictions"]
        png = base64.b64decode(preds[0]["image"])
        assert Image.open(io.BytesIO(png)).size == (80, 64)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pipeline
def test_promotion_gate_keeps_the_champion_when_the_new_version_is_worse(registered):
    work, _ = registered
    # a different student (stage 2 changed) on the same evaluation set; a gate no version can pass
    strict = REGISTER + ["distill.stage2.steps=2", "registry.gate.tolerance={psnr: -1000}"]
    out = run_pipeline(load_config("tiny", strict), work / "w")
    client = MlflowClient(out["tracking_uri"])
    assert out["model_version"] == "models:/sr-test/2"
    assert str(client.get_model_version_by_alias("sr-test", "candidate").version) == "2"
    assert str(client.get_model_version_by_alias("sr-test", "champion").version) == "1"
    tags = client.get_model_version("sr-test", "2").tags
    assert tags["gate.decision"] == "candidate" and "worse than champion 1 on psnr" in tags["gate.reason"]
    gate = out["steps"]["register"]["extra"]["gate"]
    assert any(c["metric"] == "psnr" and not c["pass"] for c in gate["checks"])
    lines = registered_lines(out)  # what the CLI prints at the end of the run
    assert lines[0] == "registered: models:/sr-test/2 (aliases: candidate)"
    assert lines[1].startswith("gate:   not promoted — worse than champion 1 on psnr [psnr ")
    assert "tolerance -1e+03)" in lines[1]
    lenient = REGISTER + ["distill.stage2.steps=1", "registry.gate.tolerance={psnr: 1000, st_lpips: 1000, piqe: 1000}",
                          "registry.gate.retention_tolerance=1000"]
    out = run_pipeline(load_config("tiny", lenient), work / "w")
    assert str(client.get_model_version_by_alias("sr-test", "champion").version) == "3"
    assert registered_lines(out)[1] == "gate:   promoted to champion — not worse than the champion within tolerances"
    # the gate's promotion is undone by hand, and redone
    from typer.testing import CliRunner

    from srcompress.cli import app

    res = CliRunner().invoke(app, ["models", "rollback", "sr-test", "--tracking-uri", out["tracking_uri"]])
    assert res.exit_code == 0 and "version 3 → 1 (rollback)" in res.output, res.output
    assert str(client.get_model_version_by_alias("sr-test", "champion").version) == "1"
    res = CliRunner().invoke(app, ["models", "promote", "sr-test", "3", "--tracking-uri", out["tracking_uri"]])
    assert res.exit_code == 0 and str(client.get_model_version_by_alias("sr-test", "champion").version) == "3"


@pipeline
def test_lineage_tree_json_and_verify(registered, tmp_path):
    from typer.testing import CliRunner

    from srcompress.cli import app

    work, out = registered
    uri = out["tracking_uri"]
    res = CliRunner().invoke(app, ["lineage", "models:/sr-test@candidate", "--tracking-uri", uri, "--verify"])
    assert res.exit_code == 0, res.output
    for step in ("degrade", "bootstrap_teacher", "encode_latents", "analyse_redundancy", "search_pruning",
                 "distill_latent", "distill_pixel", "evaluate"):
        assert step in res.output
    assert "verify: every recorded object is present and unchanged" in res.output
    res = CliRunner().invoke(app, ["lineage", "models:/sr-test/1", "--tracking-uri", uri, "--json"])
    chain = json.loads(res.output)
    assert [s["step"] for s in chain["steps"]][:2] == ["degrade", "bootstrap_teacher"]
    assert chain["dataset_digest"] == out["steps"]["degrade"]["inputs"]["sources"]
    # one object changes in the store: --verify names it and exits 1
    from srcompress.infra.store import LocalStore

    store = LocalStore(work / "w" / "store")
    key = store.key_from_uri(out["steps"]["search_pruning"]["uri"])
    path = work / "w" / "store" / key
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b'"mask"', b'"mask" ', 1))
        res = CliRunner().invoke(app, ["lineage", "models:/sr-test/1", "--tracking-uri", uri, "--verify"])
        assert res.exit_code == 1 and "search_pruning: missing or altered" in res.output, res.output
    finally:
        path.write_bytes(original)
    bad = CliRunner().invoke(app, ["lineage", "models:/sr-test@nope", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "no version has alias 'nope'" in bad.output


@pipeline
def test_evaluate_scores_a_registered_version_on_new_photos(registered, tmp_path):
    """`srcompress evaluate --models bicubic,models:/<name>@champion`: the model in production, on a new set."""
    import shutil

    from srcompress.flows.evaluate import run_evaluation
    from srcompress.tasks.common.sources import bundled_files

    work, out = registered
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, path in bundled_files(["sklearn"]):
        shutil.copy(path, photos / name.split("/")[-1])
    cfg = load_config("tiny", REGISTER + ["evaluate.models=[bicubic, models:/sr-test@champion]"])
    res = run_evaluation(cfg, work / "w", str(photos))
    champion = str(MlflowClient(out["tracking_uri"]).get_model_version_by_alias("sr-test", "champion").version)
    assert "models:/sr-test/alias/champion.psnr" in res["metrics"] and res["steps"]["evaluate"]["counts"]["images"] == 2
    assert res["steps"]["evaluate"]["inputs"]["models:/sr-test@champion"] == \
        MlflowClient(out["tracking_uri"]).get_model_version("sr-test", champion).tags["lineage.distill_pixel.digest"]
