"""The evaluation flow end to end: HR photos it has never seen, an imported teacher, the report in the store
and MLflow, caching; LR-only sets from S3; a degrade pairs manifest; the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.flows.evaluate import run_evaluation
from srcompress.models.teachers.loader import save_teacher
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from srcompress.tasks.common.sources import bundled_files

pytestmark = pytest.mark.usefixtures("prefect_harness", "module_ray")

FAST = ["evaluate.metrics=[psnr, ssim, niqe, st_lpips, lpips, fid]", "evaluate.data.center_crop=192",
        "evaluate.models=[bicubic, teacher]", "evaluate.data.tiles=null",
        "evaluate.efficiency.reps=2", "evaluate.grid_images=2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Photos the tiny pipeline never trains on (the held-out Kodak images and flower.jpg) + one broken file."""
    root = tmp_path_factory.mktemp("photos")
    for name, path in bundled_files(["kodak", "sklearn"]):
        if name in ("kodak/I04.bmp", "kodak/I19.bmp", "sklearn/flower.jpg"):
            shutil.copy(path, root / Path(name).name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "tiny-sd3"
    save_teacher(tiny_sd3_teacher(tile=16), folder)
    return folder


def _runs(result):
    client = MlflowClient(result["tracking_uri"])
    parent = client.get_run(result["parent_run_id"])
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, {r.data.tags["srcompress.step"]: r for r in kids}


def test_hr_folder_with_imported_teacher(tmp_path, photos, teacher_dir, monkeypatch):
    from srcompress.models.iqa import pyiqa_metrics

    # LPIPS weights are absent by construction (an empty pyiqa cache), whatever this machine has seeded.
    monkeypatch.setattr(pyiqa_metrics, "pyiqa_cache", lambda: tmp_path / "empty-pyiqa-cache")
    cfg = load_config("tiny", FAST + [f"teacher.source={teacher_dir}"])
    res = run_evaluation(cfg, tmp_path / "w", str(photos), summary=tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["table"] == res["table"] and Path(res["table"]).is_file()
    md = Path(res["table"]).read_text()
    assert "| bicubic |" in md and "| teacher |" in md and "lpips: unavailable: LPIPS_v0.1_alex-df73285e.pth" in md
    assert "## Skipped inputs (1)" in md and "- broken.jpg: " in md
    rows = list(csv.DictReader(Path(res["table"]).with_name("per_image.csv").open()))
    assert len(rows) == 3 * 2 and {r["model"] for r in rows} == {"bicubic", "teacher"}
    assert all(float(r["niqe"]) > 0 and float(r["st_lpips"]) >= 0 for r in rows)
    m = res["metrics"]
    assert 15 < m["bicubic.psnr"] < 40 and m["bicubic.psnr"] > m["teacher.psnr"]  # an untrained teacher
    assert m["teacher.macs"] > 0 and m["teacher.params"] > 0 and "teacher.fid" in m
    assert res["steps"]["eval_data"]["counts"] == {"images": 3, "skipped": 1, "with_hr": 3}
    grids = sorted((Path(res["table"]).parent / "grids").glob("*.png"))
    assert len(grids) == 2 and Image.open(grids[0]).width > 4 * 192

    client, parent, steps = _runs(res)
    assert set(steps) == {"bootstrap_teacher", "eval_data", "evaluate"}
    ev = steps["evaluate"]
    assert ev.info.status == "FINISHED" and parent.data.tags["srcompress.kind"] == "evaluation"
    assert ev.data.params["evaluate.color_space"] == "ycbcr" and ev.data.params["conventions.metrics.crop_border"] == "0"
    assert ev.data.params["evaluate.inference.color_fix"] == "wavelet"
    assert ev.data.metrics["teacher.psnr"] == pytest.approx(m["teacher.psnr"])
    assert "LPIPS" in ev.data.tags["srcompress.unavailable.lpips"]
    contexts = {t.value for d in ev.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert {"evaluation", "model"} <= contexts
    arts = {a.path for a in client.list_artifacts(ev.info.run_id, "evaluation")}
    assert {"evaluation/summary.md", "evaluation/per_image.csv", "evaluation/grids"} <= arts
    report = json.loads(Path(res["report_uri"].removeprefix("file://")).read_text())
    assert {"summary.md", "per_image.csv", "summary.csv"} <= set(report["files"])

    again = run_evaluation(cfg, tmp_path / "w", str(photos))
    assert again["metrics"] == res["metrics"]
    _, _, steps2 = _runs(again)
    assert steps2["evaluate"].data.tags["srcompress.cache_hit"] == "True"
    assert steps2["eval_data"].data.tags["srcompress.cache_hit"] == "True"

    # A lost eval-set image is noticed on the next run and rebuilt identically; the evaluation stays cached.
    index = json.loads(Path(res["steps"]["eval_data"]["uri"].removeprefix("file://")).read_text())
    (tmp_path / "w" / "store" / index["items"][1]["lr"]).unlink()
    third = run_evaluation(cfg, tmp_path / "w", str(photos))
    _, _, steps3 = _runs(third)
    assert steps3["eval_data"].data.tags["srcompress.cache_hit"] == "False"
    assert third["steps"]["eval_data"]["digest"] == res["steps"]["eval_data"]["digest"]
    assert steps3["evaluate"].data.tags["srcompress.cache_hit"] == "True"


def test_lr_only_set_from_s3_via_cli(tmp_path, s3_bucket, photos):
    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for p in sorted(photos.glob("*.bmp")):
        s3.put_object(Bucket=bucket, Key=f"sets/lronly/lr/{p.stem}.png", Body=_png_half(p))
    out = CliRunner().invoke(app, ["evaluate", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                                   "--data", f"s3://{bucket}/sets/lronly", "--models", "bicubic",
                                   "--summary", str(tmp_path / "s.json"), "--set", f"evaluate.data.endpoint_url={endpoint}",
                                   *sum((["--set", s] for s in FAST), [])])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["steps"]["eval_data"]["extra"]["kind"] == "lr"
    assert res["metrics"]["bicubic.niqe"] > 0 and "bicubic.psnr" not in res["metrics"]
    assert "psnr: n/a: no HR" in Path(res["table"]).read_text().replace("bicubic/", "")


def _png_half(path: Path) -> bytes:
    import io

    img = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width // 2, img.height // 2), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def test_pairs_manifest_and_bad_data(tmp_path):
    small = ["data.bundled_sets=[sklearn]", "data.held_out=[]", "degrade.crop_size=64", "degrade.crops_per_image=2",
             "degrade.shard_size=2"]
    cfg = load_config("tiny", small + FAST + ["evaluate.models=[bicubic]", "evaluate.save_outputs=true"])
    pairs = run_pipeline(cfg, tmp_path / "w", until="degrade")["steps"]["degrade"]
    manifest = tmp_path / "pairs.json"
    manifest.write_text(json.dumps(pairs))
    res = run_evaluation(cfg, tmp_path / "w", str(manifest))
    assert res["steps"]["eval_data"]["counts"]["images"] == 4
    assert res["steps"]["eval_data"]["extra"]["kind"] == "pairs"
    assert res["metrics"]["bicubic.psnr"] > 15 and "bicubic.niqe" not in res["metrics"]
    md = Path(res["table"]).read_text()  # 64-px crops: NIQE's n/a cells carry their reason and count
    assert "niqe: no value for 4/4 images of bicubic — " in md and "96x96" in md
    report = json.loads(Path(res["report_uri"].removeprefix("file://")).read_text())
    outs = sorted(k for k in report["files"] if k.startswith("outputs/bicubic/"))
    assert len(outs) == 4 and Image.open(report["files"][outs[0]]["uri"].removeprefix("file://")).size == (64, 64)

    bad = CliRunner().invoke(app, ["evaluate", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                                   "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output
    bad = CliRunner().invoke(app, ["evaluate", "--config", "tiny", "--data", str(tmp_path), "--models", "studnet"])
    assert bad.exit_code == 2 and "unknown models" in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        run_evaluation(cfg, tmp_path / "w", str(empty))
