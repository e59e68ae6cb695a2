"""The multi-step route end to end (configs/tiny-multistep.yaml at seconds scale): a bootstrapped multi-step
teacher, the MMLE regressor step, adaptive teacher outputs in the latent cache, redundancy across timesteps, a
one-step student distilled from the multi-step teacher, and teacher / teacher_adaptive / student scored side
by side with a step map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline

pytestmark = [pytest.mark.usefixtures("prefect_harness", "module_ray"), pytest.mark.slow]

MS = ["data.bundled_sets=[sklearn, kodak]", "data.held_out=[kodak/I04.bmp]", "degrade.crop_size=64",
      "degrade.shard_size=3", "degrade.crops_per_image=1",
      "teacher.bootstrap.vae_init=identity", "teacher.bootstrap.vae_channels=[8]", "teacher.bootstrap.latent_channels=4",
      "teacher.bootstrap.vae_steps=4", "teacher.bootstrap.vae_lr=8e-3", "teacher.bootstrap.vae_crop=32",
      "teacher.bootstrap.restorer_steps=4", "teacher.bootstrap.batch_size=2", "teacher.bootstrap.eval_every=2",
      "teacher.bootstrap.tile=32", "teacher.bootstrap.tile_overlap=16",
      "teacher.bootstrap.multistep.steps=4", "teacher.bootstrap.multistep.unet_channels=[16,32]",
      "teacher.bootstrap.multistep.norm_groups=8", "teacher.bootstrap.multistep.val_pairs=2",
      "adaptive.intervals=[250,500,750,1000]", "adaptive.region=16", "adaptive.region_overlap=8",
      "adaptive.train_regions=4", "adaptive.steps=5", "adaptive.fr_weights={psnr: 1.0, ssim: 1.0}",
      "encode.num_actors=1", "encode.teacher_steps=adaptive", "redundancy.calibration_size=2",
      "search.n=3", "search.m=7", "search.steps=4", "search.calibration_size=4", "search.lora_rank=2",
      "search.checkpoint_every=0", "distill.train_size=4", "distill.stage1.steps=2", "distill.stage1.batch_size=2",
      "distill.stage2.steps=2", "distill.stage2.batch_size=2", "distill.checkpoint_every=0",
      "evaluate.metrics=[psnr, ssim]", "evaluate.data.center_crop=128", "evaluate.grid_images=1",
      "evaluate.efficiency.reps=1", "evaluate.efficiency.warmup=0",
      "evaluate.models=[bicubic, teacher, teacher_adaptive, student]", "registry.enabled=false"]


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_multistep_route_runs_every_step(tmp_path):
    cfg = load_config("tiny-multistep", MS)
    out = run_pipeline(cfg, tmp_path / "w", until="evaluate")
    steps = out["steps"]
    assert {"train_mmle", "encode_latents", "analyse_redundancy", "search_pruning", "distill_pixel",
            "evaluate"} <= set(steps)
    assert steps["bootstrap_teacher"]["extra"]["kind"] == "multistep"
    assert steps["encode_latents"]["inputs"]["regressor"] == steps["train_mmle"]["digest"]

    # the latent cache holds the adaptive teacher's outputs with the steps every region took
    index = json.loads(_path(steps["encode_latents"]["uri"]).read_text())
    shard = _path(steps["encode_latents"]["uri"]).parents[2] / index["shards"][0]["key"]
    with safe_open(str(shard), "pt") as f:
        taken = f.get_tensor("teacher_steps")
        assert f.get_tensor("teacher").shape == f.get_tensor("lq").shape
        assert json.loads(f.metadata()["srcompress"])["teacher_steps"] == "adaptive"
    assert taken.dtype == torch.int32 and 1 <= int(taken.min()) and int(taken.max()) <= 4

    # PGP's scores across the teacher's timesteps, not the one-step σ path
    assert steps["analyse_redundancy"]["extra"]["axis"].startswith("timesteps")

    # the student is a one-step UNet built from the multi-step teacher; the table has every row
    models = json.loads(next((tmp_path / "w" / "evaluations").rglob("models.json")).read_text())
    assert {"teacher", "teacher_adaptive", "student"} <= set(models)
    assert models["teacher_adaptive"]["kind"] == "teacher_adaptive" and models["teacher"]["kind"] == "multistep"
    assert 1 <= models["teacher_adaptive"]["mean_steps_per_region"] <= 4
    assert models["student"]["kind"] == "student"
    assert list((tmp_path / "w" / "evaluations").rglob("step_map_teacher_adaptive.png"))

    # an identical rerun of the new step is a verified cache hit: same manifest, nothing retrained
    again = run_pipeline(cfg, tmp_path / "w", until="train_mmle")
    assert again["steps"]["train_mmle"] == steps["train_mmle"]
    assert again["outcomes"]["train_mmle"] == "cached"
