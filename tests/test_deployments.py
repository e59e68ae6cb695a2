"""prefect.yaml: every deployment points at a top-level flow file whose signature accepts its parameters, and
the dataset-triggered retraining really runs on a folder that is not the bundled photos."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_deployments_reference_flows_with_matching_parameters():
    deps = _deployments()
    for name, dep in deps.items():
        path, _ = dep["entrypoint"].split(":")
        assert path.startswith("flows/") and (ROOT / path).is_file(), name  # the top-level layout
        fl = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        assert isinstance(fl, Flow), name
        params = set(inspect.signature(fl.fn).parameters)
        given = set(dep.get("parameters", {}))
        for trig in dep.get("triggers", []):
            given |= set(trig.get("parameters", {}))
        assert given <= params, (name, given - params)
        assert (ROOT / dep["parameters"]["config"]).is_file()
    assert {"retrain-nightly", "retrain-on-new-dataset", "evaluate-on-new-dataset", "retrain-nightly-cluster"} <= set(deps)


def test_every_deployment_has_a_concurrency_limit_retries_a_timeout_and_validated_parameters():
    from prefect.exceptions import ParameterTypeError

    for name, dep in _deployments().items():
        limit = dep.get("concurrency_limit") or {}
        assert limit.get("limit") == 1 and limit.get("collision_strategy") in ("ENQUEUE", "CANCEL_NEW"), name
        if dep.get("triggers"):  # a dataset that lands while a run is busy must wait, not be dropped
            assert limit["collision_strategy"] == "ENQUEUE", name
        fl = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        assert fl.retries == 1 and fl.retry_delay_seconds > 0 and 3600 <= fl.timeout_seconds <= 24 * 3600, name
        assert fl.should_validate_parameters, name
    retrain = load_flow_from_entrypoint(str(ROOT / _deployments()["retrain-nightly"]["entrypoint"]))
    with pytest.raises(ParameterTypeError, match="until"):
        retrain.validate_parameters({"config": "configs/tiny.yaml", "workdir": "w", "until": "nope"})
    assert retrain.validate_parameters({"config": "configs/tiny.yaml", "workdir": "w", "until": "degrade"})["until"] \
        == "degrade"
    cluster = _deployments()["retrain-nightly-cluster"]
    assert cluster["parameters"]["config"] == "infra/deploy/cluster.yaml"
    assert cluster["work_pool"]["name"] != _deployments()["retrain-nightly"]["work_pool"]["name"]


def _render(value, payload: dict):
    """Prefect's `{{ event.payload.x }}` templating, for the fields our triggers use."""
    if isinstance(value, list):
        return [_render(v, payload) for v in value]
    return re.sub(r"\{\{\s*event\.payload\.(\w+)\s*\}\}", lambda m: str(payload[m.group(1)]), value)


@pytest.mark.usefixtures("prefect_harness")
def test_new_dataset_deployment_runs_on_a_real_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "landed"
    folder.mkdir()
    for i in range(5):  # photos the preset has never heard of: its held-out names do not exist here
        Image.fromarray(rng.integers(0, 256, (160, 144, 3), dtype=np.uint8)).save(folder / f"shot{i}.png")
    dep = _deployments()["retrain-on-new-dataset"]
    params = dict(dep["parameters"])
    params.update({k: _render(v, {"source": str(folder)}) for k, v in dep["triggers"][0]["parameters"].items()})
    monkeypatch.chdir(ROOT)  # the deployment's pull step sets the working directory to the checkout
    fl = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
    out = fl(config=params["config"], workdir=str(tmp_path / "w"), until="degrade", overrides=params["overrides"])
    train, hold = out["steps"]["degrade"], out["steps"]["degrade_holdout"]
    assert hold["counts"]["sources"] == 1 and train["counts"]["sources"] == 4  # a seeded 10% (at least one)


def test_datasets_register_emits_what_the_triggers_expect():
    """`srcompress datasets register --for X` sends the event, resource and payload key a trigger listens to."""
    from prefect.events.schemas.events import Resource, ResourceSpecification, matches

    from srcompress.datasets_cli import PURPOSES

    deps = _deployments()
    for purpose, target in (("retrain", "retrain-on-new-dataset"), ("evaluate", "evaluate-on-new-dataset")):
        event, kind, key = PURPOSES[purpose]
        (trig,) = deps[target]["triggers"]
        assert any(matches(e, event) for e in trig["expect"]), (purpose, trig["expect"])
        resource = Resource.model_validate({"prefect.resource.id": f"srcompress.{kind}.0123abcd"})
        assert ResourceSpecification.model_validate(trig["match"]).matches(resource), purpose
        assert f"{{{{ event.payload.{key} }}}}" in str(trig["parameters"]), (purpose, trig["parameters"])
        others = [name for name, d in deps.items() if name != target for t in d.get("triggers", [])
                  if any(matches(e, event) for e in t["expect"])]
        assert not others, (purpose, others)  # one event, one deployment
