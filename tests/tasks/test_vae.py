"""compress_vae through the flow: the teacher's VAE pruned and trained, measured beside the teacher's VAE,
published as a diffusers folder, cached, and resumed from its checkpoint after an interruption."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.manifest import Manifest
from srcompress.infra.store import StoreConfig, open_store
from srcompress.models.student.vae_prune import PrunedAutoencoderKL
from srcompress.models.student.vae_train import VAETrainer
from srcompress.tasks.common.teachers import fetch_teacher_folder
from tests.upstream import UPSTREAM, seed_workdir

pytestmark = pytest.mark.usefixtures("prefect_harness")

VAE = UPSTREAM + ["vae.enabled=true", "vae.width=4", "vae.encoder_steps=3", "vae.decoder_steps=3",
                  "vae.batch_size=2", "vae.crop=32", "vae.checkpoint_every=2", "vae.log_every=1", "vae.eval_size=2",
                  "distill.stage2.steps=1",
                  # TinySR's recipe as the defaults give it (configs/tiny.yaml tunes these for its constructed VAE)
                  "vae.separable_encoder=true", "vae.refit=false", "vae.decoder_init=pruned", "vae.dec_lr=5e-4",
                  "vae.gan_weight=0.1", "vae.max_pairs=4096", "vae.schedule=constant"]


def _folder(summary: dict, root):
    m = Manifest.model_validate(summary["steps"]["compress_vae"])
    return fetch_teacher_folder(open_store(StoreConfig(uri=summary["store"]), root), m, root)


@pytest.fixture(scope="module")
def vae_run(upstream_store, tmp_path_factory):
    """One uninterrupted VAE run on the session upstream: (work dir, summary)."""
    work = seed_workdir(upstream_store, tmp_path_factory.mktemp("vae") / "w")
    return work, run_pipeline(load_config("tiny", VAE), work, until="compress_vae")


# the tests sharing `vae_run` run on one xdist worker (a module fixture is rebuilt on every worker using it)
shared_run = pytest.mark.xdist_group("vae_run")


@shared_run
def test_the_compressed_vae_is_published_measured_and_cached(tmp_path, vae_run):
    work, out = vae_run
    assert out["outcomes"]["bootstrap_teacher"] == "cached" and out["outcomes"]["compress_vae"] == "ran"
    m = out["steps"]["compress_vae"]
    rep = m["extra"]["report"]
    assert rep["widths"] == [4] and rep["teacher_widths"] == [8] and rep["attention_removed"] and rep["separable_encoder"]
    assert rep["params"] < rep["params_teacher"] and rep["discriminator"] == "PatchDiscriminator"
    rec = rep["reconstruction"]
    assert set(rec) == {"teacher_vae", "compressed_vae"} and all(set(r) == {"psnr", "ssim", "st_lpips"} for r in rec.values())
    assert rep["eval"] == {"images": "held-out HQ crops", "count": 1, "size": [64, 64]}  # the one held-out crop
    assert rep["macs_per_image"]["compressed_vae"] < rep["macs_per_image"]["teacher_vae"]
    folder = _folder(out, tmp_path / "fetch")
    vae = PrunedAutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, use_safetensors=True)
    assert vae.config.block_out_channels == [4] and vae.config.separable_encoder
    assert json.loads((folder / "report.json").read_text())["steps"] == {"encoder": 3, "decoder": 3}
    client = MlflowClient(out["tracking_uri"])
    run = next(r for r in client.search_runs([out["experiment_id"]],
                                             f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
               if r.info.run_name == "compress_vae")
    assert run.data.metrics["compressed_vae.psnr"] == pytest.approx(rec["compressed_vae"]["psnr"])
    assert len(client.get_metric_history(run.info.run_id, "encoder.l1")) == 3
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "compress_vae")}
    assert {"compress_vae/losses.png", "compress_vae/reconstruction.png"} <= arts, arts
    again = run_pipeline(load_config("tiny", VAE), work, until="compress_vae")
    assert again["outcomes"]["compress_vae"] == "cached" and again["steps"]["compress_vae"]["digest"] == m["digest"]


@shared_run
def test_an_interrupted_compression_resumes_from_its_checkpoint(tmp_path, upstream_store, vae_run, monkeypatch):
    """The step fails at its fifth optimiser step, after the checkpoint of step 4 reached the store; the rerun
    starts at step 5 and publishes the uninterrupted run's weights (same folder digest)."""
    ref = vae_run[1]
    work = seed_workdir(upstream_store, tmp_path / "w")
    real = VAETrainer.decoder_step
    calls: list[int] = []
    fail = [True]

    def failing(self, x):
        calls.append(sum(self.steps.values()))
        if fail[0] and sum(self.steps.values()) == 4:
            raise RuntimeError("interrupted")
        return real(self, x)

    monkeypatch.setattr(VAETrainer, "decoder_step", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_pipeline(load_config("tiny", VAE), work, until="compress_vae")
    assert list((work / "store").glob("vae/*/checkpoint/latest.pt"))
    calls.clear()
    fail[0] = False
    out = run_pipeline(load_config("tiny", VAE), work, until="compress_vae")
    assert calls == [4, 5]  # steps 0-3 came from the checkpoint
    assert out["steps"]["compress_vae"]["digest"] == ref["steps"]["compress_vae"]["digest"]


def test_the_architecture_and_data_knobs_reach_the_step(upstream_workdir):
    """Attention kept, a dense encoder, no perceptual term, the projected discriminator, three training pairs,
    on the CPU: each read back from what ran (the report, the loss curves, the pair count)."""
    opts = VAE + ["vae.remove_attention=false", "vae.separable_encoder=false", "vae.perceptual_weight=0",
                  "vae.discriminator=projected_stlpips", "vae.max_pairs=3", "vae.device=cpu", "vae.seed=1"]
    out = run_pipeline(load_config("tiny", opts), upstream_workdir, until="compress_vae")
    m = out["steps"]["compress_vae"]
    assert not m["extra"]["report"]["attention_removed"] and not m["extra"]["report"]["separable_encoder"]
    assert m["counts"]["train_pairs"] == 3 and m["extra"]["report"]["discriminator"] == "ProjectedDiscriminator"
    client = MlflowClient(out["tracking_uri"])
    assert {h.value for h in client.get_metric_history(m["run_id"], "decoder.perceptual")} == {0.0}
    assert 0.0 not in {h.value for h in client.get_metric_history(m["run_id"], "decoder.gan_d")}


def test_the_training_settings_are_the_configs():
    from srcompress.tasks.vae.step import train_settings

    cfg = load_config("tiny", ["vae.enc_lr=1e-3", "vae.dec_lr=2e-3", "vae.d_lr=3e-3", "vae.l1_weight=4",
                               "vae.perceptual_weight=5", "vae.gan_weight=6", "vae.discriminator=projected_stlpips"]).vae
    s = train_settings(cfg)  # the discriminator's class is read back in the DAG tests above
    assert (s.enc_lr, s.dec_lr, s.d_lr, s.l1_weight, s.perceptual_weight, s.gan_weight) == (1e-3, 2e-3, 3e-3, 4, 5, 6)
    assert cfg.discriminator == "projected_stlpips"


def test_vae_compression_and_the_tiny_vae_are_exclusive():
    with pytest.raises(ValueError, match="enable one"):
        load_config("tiny", ["vae.enabled=true", "distill.tiny_vae.enabled=true"])
    with pytest.raises(ValueError, match="stage 2"):
        load_config("tiny", ["vae.enabled=true", "distill.stage2.steps=0"])


def test_refit_and_the_linear_decoder_restore_a_pruned_constructed_vae():
    """vae.refit and vae.decoder_init=linear as the step applies them (``_initialise``), on a pca-built
    [32, 32, 96] VAE (the embedded teacher's layout) pruned to [16, 16, 33]: pruning alone leaves the latents
    off by a scale and the decoder broken; the re-fit makes the latents the teacher's again and the realised
    linear decoder reconstructs far better than the pruned one. SepConvs come after the re-fit."""
    import logging

    import torch.nn.functional as F

    from srcompress.models.student.tiny_vae import SeparableConv2d
    from srcompress.models.teachers.tiny import tiny_vae
    from srcompress.models.teachers.vae_init import build_pca_vae
    from srcompress.tasks.vae.step import _initialise

    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(28, 3, 12, 12, generator=g), size=48, mode="bicubic").clamp(0, 1)
    images, held = smooth[:24], smooth[24:]
    teacher = tiny_vae(16, (32, 32, 96), 1)
    build_pca_vae(teacher, images * 2 - 1, 150, 2e-3, 8, 32, g, log=lambda s: None)
    teacher.eval()
    base = ["vae.width=[16, 16, 33]", "vae.separable_encoder=false", "vae.linear_steps=150"]

    def run(opts):
        vae, report = _initialise(load_config("tiny", base + opts).vae, teacher, images, "cpu", logging.getLogger())
        with torch.no_grad():
            ref = teacher.encode(held * 2 - 1).latent_dist.mean
            lat = vae.encode(held * 2 - 1).latent_dist.mean
            rec = vae.decode(ref).sample
        return vae, report, float((lat - ref).abs().max() / ref.abs().max()), float((rec - (held * 2 - 1)).pow(2).mean())

    _, plain, lat_plain, mse_plain = run(["vae.refit=false", "vae.decoder_init=pruned"])
    _, init, lat_init, mse_init = run(["vae.refit=true", "vae.decoder_init=linear"])
    assert "refit" not in plain and "linear_decoder_mse" not in plain
    assert lat_plain > 0.3 and lat_init < 0.02, (lat_plain, lat_init)
    assert mse_init < 0.1 * mse_plain, (mse_init, mse_plain)
    assert init["refit"]["encoder_rms_after"] < 0.02 * init["refit"]["encoder_rms_before"]
    _, slow, _, mse_slow = run(["vae.refit=true", "vae.decoder_init=linear", "vae.linear_lr=1e-7"])
    assert slow["linear_decoder_mse"] > 5 * init["linear_decoder_mse"] and mse_slow > 5 * mse_init  # vae.linear_lr
    sep, report, _, _ = run(["vae.refit=true", "vae.decoder_init=linear", "vae.separable_encoder=true"])
    assert report["separable_encoder"] and any(isinstance(m, SeparableConv2d) for m in sep.encoder.modules())
    assert report["params"] == sum(p.numel() for p in sep.parameters())
