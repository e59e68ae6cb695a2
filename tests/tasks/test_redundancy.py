"""analyse_redundancy through the flow: report, plots, rank agreement, MLflow artifacts, cache, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.config import ConfigError
from tests.tasks.test_teacher_encode import FAST

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_redundancy_report_plots_and_cache(tmp_path):
    cfg = load_config("tiny", FAST + ["redundancy.calibration_size=4", "redundancy.batch_size=2"])
    first = run_pipeline(cfg, tmp_path / "w", until="analyse_redundancy")
    m = first["steps"]["analyse_redundancy"]
    assert m["kind"] == "redundancy" and m["counts"] == {"blocks": 2, "calibration_pairs": 4, "scores": 5}
    assert m["inputs"] == {"latents": first["steps"]["encode_latents"]["digest"],
                           "teacher": first["steps"]["bootstrap_teacher"]["digest"]}
    report = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    assert report["blocks"] == ["transformer_blocks.0", "transformer_blocks.1"]
    assert report["softmax_axis"] == "channels" and "adaptation" in report and report["sigmas"][-1] == 1.0
    for score in ("block_influence", "pgp_cos", "pgp_kl", "removal_l1", "removal_psnr_y"):
        s = report["scores"][score]
        assert len(s["mean"]) == 2 and sorted(s["rank"]) == [0, 1] and len(report["per_image"][score][0]) == 4
    assert report["kendall_tau"]["block_influence"]["block_influence"] == pytest.approx(1.0)
    files = m["extra"]["files"]
    assert {"report.json", "blocks.csv", "kendall.png", "boxplot_block_influence.png"} <= set(files)
    assert all(Path(f["uri"].removeprefix("file://")).read_bytes()[:4] == b"\x89PNG" for k, f in files.items()
               if k.endswith(".png"))

    client = MlflowClient(first["tracking_uri"])
    run = next(r for r in client.search_runs([first["experiment_id"]],
                                             f"tags.mlflow.parentRunId = '{first['parent_run_id']}'")
               if r.info.run_name == "analyse_redundancy")
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "redundancy")}
    assert {"redundancy/report.json", "redundancy/kendall.png", "redundancy/boxplot_pgp_kl.png"} <= arts
    assert run.data.params["redundancy.calibration_size"] == "4"

    again = run_pipeline(cfg, tmp_path / "w", until="analyse_redundancy")
    assert again["outcomes"]["analyse_redundancy"] == "cached" and again["steps"]["analyse_redundancy"]["digest"] == m["digest"]
    Path(files["kendall.png"]["uri"].removeprefix("file://")).write_bytes(b"\x89PNG broken")  # corrupted
    healed = run_pipeline(cfg, tmp_path / "w", until="analyse_redundancy")
    assert healed["outcomes"]["analyse_redundancy"] == "ran"


def test_bad_redundancy_configs_name_the_key():
    with pytest.raises(ConfigError, match=r"redundancy\.sigmas"):
        load_config("tiny", ["redundancy.sigmas=[0.5, 0.25, 1.0]"])
    with pytest.raises(ConfigError, match=r"redundancy\.sigmas"):
        load_config("tiny", ["redundancy.sigmas=[0.25, 0.5]"])  # must end at 1
    with pytest.raises(ConfigError, match=r"redundancy\.calibration_size"):
        load_config("tiny", ["redundancy.calibration_size=1"])
