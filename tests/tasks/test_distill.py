"""distill_latent / distill_pixel through the flow: DeepSpeed ranks on Ray, student manifests, the
diffusers-loadable folder, MLflow curves and grids, per-stage caching, resume after kill -9."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.ray_cluster import RankFailed
from srcompress.models.student.student import load_student
from tests.tasks.test_search import SEARCH, kill_training_ranks_when
from tests.upstream import seed_workdir

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]  # DeepSpeed stages: minutes

DISTILL = SEARCH + ["search.steps=2", "distill.train_size=6", "distill.stage1.steps=4", "distill.stage1.batch_size=2",
                    "distill.stage2.steps=3", "distill.stage2.batch_size=2", "distill.log_every=1",
                    "distill.checkpoint_every=0", "distill.stage2.discriminator=patch"]
# The session's one uninterrupted two-stage run (tests/conftest.py `two_stage`): DISTILL with a stage 1 long enough
# to be killed after its first checkpoint (step 4 of 12) and still have steps to go, so the resume test can compare
# against it, and a search that logs every step (its points are golden: tests/test_golden_curves.py).
TWO_STAGE = DISTILL + ["distill.stage1.steps=12", "distill.checkpoint_every=4", "search.log_every=1"]

# The tests that share the session's `two_stage` run (tests/conftest.py) run on one xdist worker, one after another
# (a session fixture is built once per worker that runs one of its tests); tests/tasks/test_register.py's
# pipeline tests join the group: their run starts from a copy of this one's store.
shared_run = pytest.mark.xdist_group("distill_two_stage")


def _run(client: MlflowClient, summary: dict, step: str):
    runs = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return next(r for r in runs if r.info.run_name == step)


def _folder(summary: dict, step: str, root):
    from srcompress.infra.manifest import Manifest
    from srcompress.infra.store import StoreConfig, open_store
    from srcompress.tasks.common.teachers import fetch_teacher_folder

    m = Manifest.model_validate(summary["steps"][step])
    return fetch_teacher_folder(open_store(StoreConfig(uri=summary["store"]), root), m, root)


def _diffusers_sr(folder, x01: torch.Tensor) -> torch.Tensor:
    """The student computed without our student classes: ``from_pretrained`` of each component + the folder's
    JSON — diffusers' SD3 transformer, or the image-only ``TinySRTransformer`` (a diffusers ModelMixin)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from safetensors.torch import load_file

    from srcompress.models.student.tinysr import TinySRTransformer

    meta = json.loads((folder / "student.json").read_text())
    cls = TinySRTransformer if meta.get("image_only") else SD3Transformer2DModel
    tr = cls.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    sf = meta["convention"]["scaling_factor"]
    with torch.no_grad():
        z = vae.encode(x01 * 2 - 1).latent_dist.mean * sf
        if meta.get("image_only"):
            v = tr(z)
        else:
            pe = load_file(str(folder / "prompt_embeds.safetensors"))
            v = tr(hidden_states=z, encoder_hidden_states=pe["prompt_embeds"],
                   pooled_projections=pe["pooled_prompt_embeds"], timestep=torch.full((1,), meta["timestep"])).sample
        return ((vae.decode((z - meta["timestep"] / 1000 * v) / sf).sample.clamp(-1, 1) + 1) / 2).clamp(0, 1)


def _folder_tensor_count(folder) -> int:
    from safetensors.torch import load_file

    return sum(v.numel() for f in folder.rglob("*.safetensors") for v in load_file(str(f)).values())


def _planned(out: dict, cfg, root) -> dict:
    """``srcompress plan``'s count, on the meta device, for this run's teacher configs, mask and distill config."""
    from safetensors.torch import load_file

    from srcompress.models.student import plan as planning
    from srcompress.tasks.distill.build import final_student

    teacher = _folder(out, "bootstrap_teacher", root)
    tcfg = json.loads((teacher / "transformer" / "config.json").read_text())
    vcfg = json.loads((teacher / "vae" / "config.json").read_text())
    mask = out["steps"]["search_pruning"]["extra"]["mask"]
    tokens = load_file(str(teacher / "prompt_embeds.safetensors"))["prompt_embeds"].shape[1]
    return planning.plan(tcfg, vcfg, mask=mask, size=32, text_tokens=tokens,
                         build=lambda t, m: final_student(t, m, cfg.distill))


@shared_run
def test_two_stage_distillation_publishes_a_diffusers_student(tmp_path, two_stage):
    cfg, work, out, starts = two_stage
    s1, s2 = out["steps"]["distill_latent"], out["steps"]["distill_pixel"]
    assert out["outcomes"]["distill_latent"] == out["outcomes"]["distill_pixel"] == "ran"
    assert s1["kind"] == s2["kind"] == "student" and s2["inputs"]["stage1"] == s1["digest"]
    assert s1["counts"]["steps"] == 12 and s2["counts"]["steps"] == 3
    assert s2["extra"]["streamlined"] and s2["extra"]["image_only"] and len(s2["extra"]["kept_blocks"]) == 1
    folder = _folder(out, "distill_pixel", tmp_path / "fetch")
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pkl"))
    assert json.loads((folder / "model_index.json").read_text())["transformer"] == \
        ["srcompress.models.student.tinysr", "TinySRTransformer"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # one tile: no tiling in either
    ours = load_student(folder)
    assert ours.streamlined and ours.image_only
    # the published folder is exactly the runtime student, and it is the student `srcompress plan` counts
    runtime = sum(p.numel() for p in ours.backbone.parameters()) + sum(p.numel() for p in ours.vae.parameters())
    assert _folder_tensor_count(folder) == runtime
    assert _planned(out, cfg, tmp_path / "fetch")["student"]["params"] == runtime
    with torch.no_grad():
        assert torch.allclose(_diffusers_sr(folder, x), ours(x), atol=1e-4)
    client = MlflowClient(out["tracking_uri"])
    # the search before it: one rank, a default engine read back from DeepSpeed (ZeRO-1, float32, one optimizer
    # step per micro-step: 2 of 2), its result, plots and MLflow record (ZeRO-2/bf16/accumulation on two ranks:
    # tests/tasks/test_search.py)
    m = out["steps"]["search_pruning"]
    assert m["kind"] == "mask" and m["counts"] == {"blocks": 2, "kept": 1, "world_size": 1}
    result = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    assert result["world_size"] == 1 and len(result["history"]) == 2  # logged at each of 2 steps
    assert result["deepspeed"]["zero_optimization"]["stage"] == 1
    eng = m["extra"]["engine"]
    assert eng["zero_stage"] == 1 and not eng["bf16"] and eng["param_dtype"] == "float32", eng
    assert eng["gradient_accumulation_steps"] == 1 and eng["optimizer_steps"] == 2, eng
    assert {"gates.png", "loss.png", "lora.safetensors", "result.json"} <= set(m["extra"]["files"])
    search = _run(client, out, "search_pruning")
    assert search.data.params["world_size"] == "1"
    assert search.data.params["deepspeed_config.zero_optimization.stage"] == "1"
    assert {"search/gates.png", "search/loss.png"} <= {
        a.path for a in client.list_artifacts(search.info.run_id, "search")}
    r1, r2 = _run(client, out, "distill_latent"), _run(client, out, "distill_pixel")
    assert len(client.get_metric_history(r1.info.run_id, "stage1.loss")) == 12
    assert {"stage2.loss", "stage2.d_loss", "stage2.g_adv", "stage2.perceptual"} <= set(r2.data.metrics)
    assert "distill/stage2_grid.png" in {a.path for a in client.list_artifacts(r2.info.run_id, "distill")}
    # stage 2 settings change: stage 1 is reused from the cache, stage 2 retrains (in a copy of the run's store)
    again = run_pipeline(load_config("tiny", TWO_STAGE + ["distill.stage2.gan_weight=0"]),
                         seed_workdir(work / "store", tmp_path / "again"), until="distill_pixel")
    assert again["outcomes"]["search_pruning"] == again["outcomes"]["distill_latent"] == "cached"
    assert again["outcomes"]["distill_pixel"] != "cached"
    assert again["steps"]["distill_latent"]["digest"] == s1["digest"]
    # search and both stages ran their DeepSpeed ranks on one local Ray, started once for the flow run
    assert starts == ["local"], starts


@shared_run
def test_two_ranks_tiny_vae_phase_adapter_gan_and_a_budget(tmp_path, two_stage):
    """Two ranks at ZeRO-2 with the fitted tiny VAE, the phase adapter and the projected ST-LPIPS discriminator —
    each read back from what ran (the engines, the loaded student), not from the config. The N:M and the tiny
    VAE's width come from ``search.budget`` (the config asks for 2:2 and width 16; the budget only fits 1:2
    with width 8), and the published student is the one the budget chose."""
    from srcompress.models.student.plan import keep_to_mask
    from srcompress.models.student.shape import final_student
    from srcompress.models.teachers import load_teacher

    opts = DISTILL + ["distill.num_workers=2", "distill.tiny_vae.enabled=true",
                      "distill.tiny_vae.steps=3", "distill.tiny_vae.width=16",
                      "distill.tiny_vae.blocks=1", "distill.phase_adapter=true",
                      "distill.stage2.discriminator=projected_stlpips",
                      "distill.deepspeed.zero_stage=2", "search.n=2",
                      "distill.stage1.steps=1"]  # what is checked here happens in stage 2
    work = seed_workdir(two_stage[1] / "store", tmp_path / "w")
    teacher = load_teacher(_folder(two_stage[2], "bootstrap_teacher", tmp_path / "teacher"))
    shape = load_config("tiny", opts).distill.shape("sd3")
    budget = sum(p.numel() for p in final_student(teacher, keep_to_mask([0], 2), shape.with_vae_width(8)).parameters())
    cfg = load_config("tiny", opts + [f"search.budget={{metric: params, value: {budget}, size: 32, vae_widths: [8, 16]}}"])
    out = run_pipeline(cfg, work, until="distill_pixel")
    assert out["outcomes"]["distill_latent"] == out["outcomes"]["distill_pixel"] == "ran"
    mask = out["steps"]["search_pruning"]["extra"]
    assert (mask["n"], mask["m"], mask["budget"]["vae_width"]) == (1, 2, 8), mask
    assert 0.95 * budget <= mask["budget"]["params"] <= budget and sum(mask["mask"]) == 1, mask["budget"]
    s2 = out["steps"]["distill_pixel"]
    assert s2["counts"]["world_size"] == 2 and s2["extra"]["tiny_vae"] and s2["extra"]["phase_adapter"]
    g, d = s2["extra"]["engines"]["g"], s2["extra"]["engines"]["d"]
    assert g["zero_stage"] == d["zero_stage"] == 2 and g["optimizer_steps"] == d["optimizer_steps"] == 3, (g, d)
    # the projected discriminator: a frozen ST-LPIPS trunk under trainable heads (a patch D has nothing frozen)
    assert d["discriminator"] == "ProjectedDiscriminator" and d["frozen_params"] > d["trainable_params"] > 0, d
    student = load_student(_folder(out, "distill_pixel", tmp_path / "fetch"))
    assert student.tiny_vae and student.phase is not None  # tiny_vae: the loaded VAE's class, not a flag
    assert student.vae.config["encoder_block_out_channels"][0] == 8  # the budget's width, not the config's 16
    assert student(torch.rand(1, 3, 40, 24)).shape == (1, 3, 40, 24)
    assert s2["extra"]["tiny_vae_fit"]["steps"] == 3


@shared_run
def test_the_final_student_decodes_with_the_compressed_vae(tmp_path, two_stage):
    """With vae.enabled, compress_vae runs after the teacher, stage 1 and the search stay cached, and stage 2
    swaps in the compressed VAE and trains its decoder: the published student loads a PrunedAutoencoderKL whose
    encoder is the step's (untouched) and whose decoder moved — unless ``distill.stage2.train_decoder`` is off."""
    from srcompress.models.student.vae_prune import PrunedAutoencoderKL

    # the session teacher's VAE saturates (4 fine-tune steps): a few fast steps bring the compressed decoder's
    # output into [-1, 1], where the decode's clamp passes gradients to it
    opts = TWO_STAGE + ["vae.enabled=true", "vae.width=4", "vae.encoder_steps=2", "vae.decoder_steps=8",
                        "vae.dec_lr=0.01", "vae.batch_size=2", "vae.crop=32", "vae.eval_size=1",
                        "vae.schedule=constant", "vae.refit=false", "vae.decoder_init=pruned",
                        "distill.stage2.train_decoder=true"]
    work = seed_workdir(two_stage[1] / "store", tmp_path / "w")
    out = run_pipeline(load_config("tiny", opts), work, until="distill_pixel")
    o = out["outcomes"]
    assert (o["compress_vae"], o["search_pruning"], o["distill_latent"], o["distill_pixel"]) == (
        "ran", "cached", "cached", "ran"), o
    assert out["steps"]["distill_pixel"]["inputs"]["vae"] == out["steps"]["compress_vae"]["digest"]
    assert out["steps"]["distill_pixel"]["extra"]["compressed_vae"]
    student = load_student(_folder(out, "distill_pixel", tmp_path / "fetch"))
    assert student.compressed_vae and isinstance(student.vae, PrunedAutoencoderKL)
    assert list(student.vae.config.block_out_channels) == [4]
    step_vae = PrunedAutoencoderKL.from_pretrained(_folder(out, "compress_vae", tmp_path / "vae"), subfolder="vae")
    enc = {k: v for k, v in step_vae.state_dict().items() if k.startswith("encoder.")}
    dec = {k: v for k, v in step_vae.state_dict().items() if k.startswith("decoder.")}
    mine = student.vae.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in enc.items())
    assert not all(torch.equal(mine[k], v) for k, v in dec.items())  # stage 2 trained the decoder
    assert student(torch.rand(1, 3, 40, 24)).shape == (1, 3, 40, 24)
    # distill.stage2.train_decoder=false: stage 2 reruns, and the decoder stays the step's
    again = run_pipeline(load_config("tiny", opts + ["distill.stage2.train_decoder=false"]), work, until="distill_pixel")
    assert (again["outcomes"]["compress_vae"], again["outcomes"]["distill_pixel"]) == ("cached", "ran")
    frozen = load_student(_folder(again, "distill_pixel", tmp_path / "fetch2")).vae.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in (enc | dec).items())


@shared_run
def test_a_killed_distillation_stage_resumes_from_its_checkpoint(tmp_path, two_stage):
    """A training rank's process is SIGKILLed after a stage-1 checkpoint reached the store; the rerun resumes
    from it (its first logged step is after the checkpoint) and ends with the uninterrupted run's student."""
    cfg, ref_work, ref_out, _ = two_stage  # the uninterrupted run: this config (12 steps, checkpoints every 4)
    ref = ref_out["steps"]["distill_latent"]
    # a copy of its store without stage 1 (its cache records, students and checkpoints): the search is a cache hit
    work = seed_workdir(ref_work / "store", tmp_path / "w", recompute=("distill_latent",))
    assert not list((work / "store").glob("distill/*/stage1/checkpoint/latest.json"))
    killed = threading.Event()
    watcher = threading.Thread(target=kill_training_ranks_when,
                               args=("distill/*/stage1/checkpoint/latest.json", work / "store", killed), daemon=True)
    watcher.start()
    with pytest.raises(RankFailed):  # the killed rank fails the launch, nothing else
        run_pipeline(cfg, work, until="distill_latent")
    assert killed.is_set()
    out = run_pipeline(cfg, work, until="distill_latent")
    assert out["outcomes"]["search_pruning"] == "cached" and out["outcomes"]["distill_latent"] == "ran"
    m = out["steps"]["distill_latent"]
    client = MlflowClient(out["tracking_uri"])
    losses = client.get_metric_history(_run(client, out, "distill_latent").info.run_id, "stage1.loss")
    assert min(x.step for x in losses) > 4 and m["counts"]["steps"] < 12  # resumed, not restarted
    assert m["digest"] == ref["digest"]  # bit-identical student folder


def _diffusers_unet_sr(folder, x01: torch.Tensor, peam=None) -> torch.Tensor:
    """A UNet student computed with diffusers alone: UNet, scheduler and VAE from the folder, OSEDiff's step
    (``peam``: the student's PEAM hooked into that UNet's decoder stages)."""
    import contextlib

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    meta = json.loads((folder / "student.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    pe = load_file(str(folder / "prompt_embeds.safetensors"))["prompt_embeds"]
    sf, t = meta["convention"]["scaling_factor"], meta["timestep"]
    with torch.no_grad():
        z = vae.encode(x01 * 2 - 1).latent_dist.mean * sf
        with peam.attached(unet, z) if peam is not None else contextlib.nullcontext():
            eps = unet(z, torch.tensor([t]), encoder_hidden_states=pe).sample
        z0 = sched.step(eps, t, z).pred_original_sample
        return ((vae.decode(z0 / sf).sample.clamp(-1, 1) + 1) / 2).clamp(0, 1)


def test_a_unet_teacher_becomes_a_smaller_diffusers_unet_student_by_pgp_diffsrs_route(tmp_path, upstream_workdir):
    """OSEDiff-style UNet teacher (imported folder, 7 units: an encoder pair, the resnet-attention-resnet
    bottleneck, two decoder attentions) through PGP-DiffSR's route at 3:7 — the coarse stage keeps one
    bottleneck resnet, two fine rounds each prune a decoder attention after re-scoring the recovered model,
    every round a nested MLflow run — then both distillation stages with PEAM in the pruned decoder, its
    no-PEAM ablation, and the evaluation: the student is a smaller UNet2DConditionModel that diffusers loads and
    that reproduces the pipeline; the report pairs it with the ablation and shows the phase fidelity."""
    from srcompress.models.teachers import save_teacher
    from srcompress.models.teachers.tiny import tiny_unet_teacher
    from tests.tasks.test_search import _run

    folder = save_teacher(tiny_unet_teacher(seed=2), tmp_path / "unet-teacher")
    base = DISTILL + [f"teacher.source={folder}", "search.n=3", "search.m=7", "distill.stage2.steps=2",
                      "search.method=pgp_progressive", "search.pgp.round_steps=2", "search.log_every=2",
                      "search.lora_targets=[to_q, to_k, to_v]", "distill.phase_adapter=peam",
                      "distill.phase_ablation=[none]", "evaluate.metrics=[psnr]", "evaluate.efficiency.enabled=false",
                      "evaluate.data.center_crop=64", "evaluate.data.tiles=32", "evaluate.grid_images=1",
                      "evaluate.models=[bicubic, teacher, pruned, student, student_phase_none]"]
    with pytest.raises(ValueError, match="set distill.streamline=false for UNet teachers"):
        run_pipeline(load_config("tiny", base), upstream_workdir, until="distill_latent")
    out = run_pipeline(load_config("tiny", base + ["distill.streamline=false"]), upstream_workdir, until="evaluate")
    # the progressive search
    m = out["steps"]["search_pruning"]
    result = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    coarse, *fine = result["rounds"]
    assert coarse["stage"] == "coarse" and set(coarse["pruned"]) in (
        {"mid_block.attentions.0", "mid_block.resnets.0"}, {"mid_block.attentions.0", "mid_block.resnets.1"})
    assert [r["stage"] for r in fine] == ["fine", "fine"] and [len(r["kept"]) for r in fine] == [4, 3]
    assert sorted(n for r in fine for n in r["pruned"]) == ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    assert all(r["recovered_l1"] > 0 and r["psnr_y"] > 0 for r in fine)
    for before, r in zip([coarse, *fine], fine):  # re-scored on the pruned model: what is gone scores 0
        assert all((r["importance"][n] == 0) == (n not in before["kept"]) for n in result["blocks"]), r
    assert m["extra"]["method"] == "pgp_progressive" and m["extra"]["kept"] == fine[-1]["kept"]
    assert sum(m["extra"]["mask"]) == 3 and "redundancy" in m["inputs"]
    assert len(result["history"]) == 3  # 2 rounds × 2 + 2 final micro-steps, logged every 2
    client = MlflowClient(out["tracking_uri"])
    # under the search run that computed the mask (the refused first run's: this one's search was a cache hit)
    rounds = client.search_runs([out["experiment_id"]], f"tags.mlflow.parentRunId = '{m['run_id']}'")
    by_name = {r.info.run_name: r for r in rounds}
    assert set(by_name) == {"pgp-round-0", "pgp-round-1", "pgp-round-2"}
    assert [by_name[f"pgp-round-{i}"].data.metrics["kept"] for i in range(3)] == [5, 4, 3]
    assert "psnr_y" in by_name["pgp-round-1"].data.metrics and "psnr_y" not in by_name["pgp-round-0"].data.metrics
    assert by_name["pgp-round-0"].data.params["stage"] == "coarse"
    # the student: both decoder attentions gone (realised), PEAM at that stage, the ablation without it
    s2 = out["steps"]["distill_pixel"]
    surgery = s2["extra"]["surgery"]
    assert surgery["unrealised"] == [] and set(surgery["removed"]) == set(coarse["pruned"]) | {
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"}
    assert s2["counts"]["params_backbone"] < out["steps"]["bootstrap_teacher"]["extra"]["params_backbone"]
    assert s2["extra"]["phase_adapter"] == "peam" and out["steps"]["distill_pixel_phase_none"]["extra"][
        "phase_adapter"] == "none"
    assert {"distill_latent_phase_none", "distill_pixel_phase_none"} <= set(out["outcomes"])
    student_dir = _folder(out, "distill_pixel", tmp_path / "fetch")
    assert json.loads((student_dir / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert json.loads((student_dir / "student.json").read_text())["peam"]["stages"] == [1]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = load_student(student_dir)
    assert ours.phase_mode == "peam"
    with torch.no_grad():  # diffusers' UNet with the same PEAM hooks reproduces ours
        assert torch.allclose(_diffusers_unet_sr(student_dir, x, ours.phase), ours(x), atol=1e-4)
    # the evaluation: both students scored, the ablation paired, phase fidelity reported
    metrics = out["steps"]["evaluate"]["extra"]["metrics"]
    assert {"teacher.psnr", "pruned.psnr", "student.psnr", "student_phase_none.psnr"} <= set(metrics)
    eval_run = _run(client, out, "evaluate")
    arts = {a.path for a in client.list_artifacts(eval_run.info.run_id, "evaluation")}
    assert {"evaluation/summary.md", "evaluation/phase.json", "evaluation/retention.json"} <= arts, arts
    summary_md = Path(client.download_artifacts(eval_run.info.run_id, "evaluation/summary.md", str(tmp_path)))
    text = summary_md.read_text()
    assert "| student_phase_none |" in text and "against its ablations" in text and "Phase fidelity" in text
