"""analyse_redundancy: the scores on a teacher with a known identity block, the rank agreement against an
independent Kendall τ, and through the flow: report, plots, MLflow artifacts, cache, bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from scipy.stats import kendalltau

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.config import ConfigError
from srcompress.models.pruning.redundancy import PSNR_CAP_DB, block_scores
from srcompress.tasks.redundancy.report import summarise
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from tests.tasks.test_teacher_encode import FAST


def _independent_tau(report: dict) -> dict:
    """τ between every two criteria, recomputed with scipy from the report's per-block means and signs (not
    from the code path that wrote ``kendall_tau``): None where a criterion is constant (τ undefined)."""
    imp = {k: [s["importance_sign"] * m for m in s["mean"]] for k, s in report["scores"].items()}
    out = {}
    for a, ia in imp.items():
        for b, ib in imp.items():
            tau = kendalltau(ia, ib).statistic
            out[a, b] = None if math.isnan(tau) else float(tau)
    return out


def _assert_tau_matches(report: dict) -> None:
    expected = _independent_tau(report)
    for (a, b), tau in expected.items():
        got = report["kendall_tau"][a][b]
        assert (got is None) if tau is None else got == pytest.approx(tau, abs=1e-9), (a, b, got, tau)


@torch.no_grad()
def test_identity_block_scores_lowest_and_tau_compares_two_criteria():
    # Block 1 of a 4-block SD3 teacher made an exact identity (adaLN-Zero: every gate 0, image and context
    # stream), the other blocks left random: the scores must single it out, whatever the random weights.
    teacher = tiny_sd3_teacher(num_layers=4).eval()
    names = [n for n, _ in teacher.prunable_blocks()]
    block = dict(teacher.prunable_blocks())[names[1]]
    for lin in (block.norm1.linear, block.norm1_context.linear):
        lin.weight.zero_()
        lin.bias.zero_()
    g = torch.Generator().manual_seed(0)
    z_lq, z_hq = torch.randn(2, 16, 16, 16, generator=g), torch.randn(2, 16, 16, 16, generator=g)
    scores = block_scores(teacher, z_lq, z_hq)
    assert scores["block_influence"][1].max() < 1e-6  # 1 − cos(x, x)
    assert torch.equal(scores["removal_l1"][1], torch.zeros(2))  # skipping an identity changes nothing
    assert torch.equal(scores["removal_psnr_y"][1], torch.full((2,), PSNR_CAP_DB))
    # PGP scores compare a block's outputs along the path: the identity's outputs are block 0's
    assert torch.allclose(scores["pgp_cos"][1], scores["pgp_cos"][0]) and scores["pgp_cos"][1].min() > 0
    report = summarise(names, scores)
    for k in ("block_influence", "removal_l1", "removal_psnr_y"):
        assert report["scores"][k]["least_important_first"][0] == names[1], k
        assert report["scores"][k]["rank"][1] == 0, k
    # The criteria disagree on some pair here, so a τ of a criterion with itself cannot pass for a pair's.
    tau = _independent_tau(report)
    assert any(v is not None and v < 0.99 for (a, b), v in tau.items() if a != b)
    _assert_tau_matches(report)


def test_kendall_tau_uses_the_unified_importance_signs():
    # Hand-made scores with known ranks: removal_psnr_y is HIGH for an unimportant block (sign −1), so the same
    # numbers as block influence mean the opposite ranking (τ = −1), and removal_l1 reversed agrees with it.
    bi = torch.tensor([[1.0, 1.2], [2.0, 2.2], [3.0, 3.2]])
    report = summarise(["a", "b", "c"], {"block_influence": bi, "removal_psnr_y": bi.clone(),
                                         "removal_l1": bi.flip(0)})
    tau = report["kendall_tau"]
    assert tau["block_influence"]["removal_psnr_y"] == pytest.approx(-1.0)
    assert tau["block_influence"]["removal_l1"] == pytest.approx(-1.0)
    assert tau["removal_psnr_y"]["removal_l1"] == pytest.approx(1.0)
    assert report["scores"]["removal_psnr_y"]["least_important_first"] == ["c", "b", "a"]
    _assert_tau_matches(report)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
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
        per_image = torch.tensor(report["per_image"][score])  # the means are the per-image scores' means
        assert torch.allclose(per_image.mean(-1), torch.tensor(s["mean"]))
    _assert_tau_matches(report)  # every pair of criteria, against scipy on the report's own per-block means
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
