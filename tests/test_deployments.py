"""prefect.yaml: every deployment points at a real flow whose signature accepts the parameters it is given."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]


def test_deployments_reference_flows_with_matching_parameters():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        fl = getattr(module, attr)
        assert isinstance(fl, Flow), dep["name"]
        params = set(inspect.signature(fl.fn).parameters)
        given = set(dep.get("parameters", {}))
        for trig in dep.get("triggers", []):
            given |= set(trig.get("parameters", {}))
        assert given <= params, (dep["name"], given - params)
        assert (ROOT / dep["parameters"]["config"]).is_file()
        names.add(dep["name"])
    assert {"retrain-nightly", "retrain-on-new-dataset", "evaluate-on-new-dataset"} <= names
