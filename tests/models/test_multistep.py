"""Multi-step teachers (StableSR / SD-x4-upscaler style): the sampler against diffusers' own, the DDIM jump
against ``DDIMScheduler.step``, tiling and batching invariance, and both folder layouts through the loader."""

from __future__ import annotations

import json

import pytest
import torch

from srcompress.models.teachers import TeacherLoadError, load_teacher, save_teacher
from srcompress.models.teachers.multistep import ddim_jump, make_scheduler
from srcompress.models.teachers.tiny import tiny_multistep_teacher


def _lq(b=2, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ddim():
    return tiny_multistep_teacher(seed=0, steps=4).eval()


@torch.no_grad()
def test_trajectory_is_the_diffusers_sampling_loop(ddim):
    """The sampler written out by hand with diffusers' DDIM (cat[z_t, z_L] into the UNet, ε-prediction): the
    teacher's restore must equal it, and every step's input must reach the callback."""
    z_lq = ddim.encode(_lq())
    sched = make_scheduler("ddim")
    sched.set_timesteps(4)
    z = ddim.noise(z_lq.shape[1:], 2)
    seen = []
    for t in sched.timesteps:
        eps = ddim.unet(torch.cat([z, z_lq], 1), t, encoder_hidden_states=ddim.prompt_embeds.expand(2, -1, -1)).sample
        z = sched.step(eps, t, z).prev_sample
        seen.append(int(t))
    got = []
    out = ddim.trajectory(z_lq, callback=lambda i, t, zt: got.append(t))
    assert torch.allclose(out, z, atol=1e-5)
    assert got == seen == [751, 501, 251, 1]  # SD's "leading" spacing with steps_offset 1
    assert ddim.timestep == 751


@torch.no_grad()
def test_ddim_jump_equals_diffusers_ddim_step():
    """Pinned to diffusers: for the scheduler's own spacing, the arbitrary-jump DDIM update is its step(eta=0)."""
    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = sched.alphas_cumprod
    for t in sched.timesteps[:-1]:
        t = int(t)
        ref = sched.step(eps, t, z).prev_sample
        x0 = (z - (1 - a[t]).sqrt() * eps) / a[t].sqrt()
        assert torch.allclose(ddim_jump(z, x0, a[t], a[t - 100]), ref, atol=1e-5)


@torch.no_grad()
def test_deterministic_batch_and_tile_invariant():
    """Same input → same output; an image's result does not depend on its batch; a tiled run on an input that
    fits one tile is the untiled run (the tiler blends finished trajectories)."""
    t = tiny_multistep_teacher(seed=3, steps=3, scheduler="ddpm").eval()
    x = _lq(3)
    a, b = t(x), t(x)
    assert torch.equal(a, b)
    assert torch.allclose(t(x[1:2]), a[1:2], atol=1e-5)
    t.tile, t.tile_overlap = 8, 4
    assert torch.allclose(t(x), a, atol=1e-6)  # 32 px → 8-cell latent: one tile
    wide = t(_lq(1, 64))
    assert wide.shape == (1, 3, 64, 64) and torch.isfinite(wide).all()


@torch.no_grad()
def test_steps_change_the_result_and_the_cost(ddim):
    z = ddim.encode(_lq(1))
    calls = []
    h = ddim.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        ddim.steps = 2
        two = ddim.restore_latent(z)
        n2 = len(calls)
        ddim.steps = 4
        four = ddim.restore_latent(z)
    finally:
        h.remove()
    assert n2 == 2 and len(calls) - n2 == 4
    assert not torch.allclose(two, four, atol=1e-3)


def test_wrong_unet_for_the_condition_is_refused():
    t = tiny_multistep_teacher(steps=1)
    with pytest.raises(ValueError, match="in_channels"):
        type(t)(t.vae, t.unet, t.scheduler, t.prompt_embeds, t.convention, condition="pixels")
    with pytest.raises(ValueError, match="steps must be"):
        type(t)(t.vae, t.unet, t.scheduler, t.prompt_embeds, t.convention, steps=0)


@torch.no_grad()
def test_save_load_round_trip_with_scheduler_override(tmp_path, ddim):
    save_teacher(ddim, tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "teacher.json").read_text())
    assert meta["kind"] == "multistep" and meta["steps"] == 4 and meta["condition"] == "latent"
    back = load_teacher(tmp_path / "t")
    x = _lq(1)
    assert back.kind == "multistep" and torch.allclose(back(x), ddim(x), atol=1e-5)
    dpm = load_teacher(tmp_path / "t", scheduler="dpm", steps=2)
    assert type(dpm.scheduler).__name__ == "DPMSolverMultistepScheduler" and dpm.steps == 2
    assert torch.equal(dpm.alphas_cumprod, back.alphas_cumprod)  # the model's noise schedule is kept
    with pytest.raises(TeacherLoadError, match="scheduler must be one of"):
        load_teacher(tmp_path / "t", scheduler="euler")


def _tiny_clip(folder):
    """A CLIP text encoder and a byte-level BPE tokenizer small enough to build here (SD's classes)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c] = 3 + i
        vocab[c + "</w>"] = 29 + i
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"),
                        pad_token="!", model_max_length=8)
    tok.save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8))
    enc.save_pretrained(folder / "text_encoder", safe_serialization=True)
    return tok, enc


@torch.no_grad()
def test_stable_diffusion_upscale_pipeline_folder(tmp_path):
    """diffusers' x4-upscaler layout: LR pixels + noise-level class labels, the prompt encoded by the folder's
    own CLIP text encoder; the loaded teacher reproduces the one it was written from."""
    src = tiny_multistep_teacher(seed=1, steps=3, condition="pixels", noise_level=20)
    f = tmp_path / "x4"
    src.vae.save_pretrained(f / "vae", safe_serialization=True)
    src.unet.save_pretrained(f / "unet", safe_serialization=True)
    src.scheduler.save_pretrained(f / "scheduler")
    src.low_res_scheduler.save_pretrained(f / "low_res_scheduler")
    (f / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline",
                                                    "max_noise_level": 350}))
    tok, enc = _tiny_clip(f)
    (f / "teacher.json").write_text(json.dumps({"steps": 3, "prompt": "abc", "seed": 1}))
    t = load_teacher(f)
    assert t.kind == "multistep" and t.condition == "pixels" and t.noise_level == 20
    ids = tok(["abc"], padding="max_length", max_length=8, return_tensors="pt").input_ids
    assert torch.allclose(t.prompt_embeds, enc(ids).last_hidden_state, atol=1e-6)
    src.prompt_embeds = t.prompt_embeds  # same conditioning → same teacher
    x = _lq(1)
    assert t.encode(x).shape == (1, 3, 8, 8)
    assert torch.allclose(t(x), src(x), atol=1e-5)
    (f / "teacher.json").write_text(json.dumps({"noise_level": 400}))
    with pytest.raises(TeacherLoadError, match="noise_level 400 outside"):
        load_teacher(f)


@torch.no_grad()
def test_redundancy_of_a_multistep_teacher_is_across_its_timesteps(ddim):
    """PGP-DiffSR's Φ_cos / Ψ_KL on a multi-step teacher: adjacent timesteps of its own DDIM trajectory, checked
    against the block outputs captured step by step from diffusers' loop written out here; the HQ latent (the
    one-step σ path's other end) plays no part."""
    ddim.steps = 3
    try:
        _check_timestep_redundancy(ddim)
    finally:
        ddim.steps = 4


def _check_timestep_redundancy(ddim):
    from srcompress.models.pruning.redundancy import block_scores, kl_channels, one_minus_cos

    z_lq = ddim.encode(_lq(2))
    names = [n for n, _ in ddim.prunable_blocks()][:3]
    sched = make_scheduler("ddim")
    sched.set_timesteps(3)
    z = ddim.noise(z_lq.shape[1:], 2)
    per_step = []
    for t in sched.timesteps:
        with ddim.capture(names) as f:
            eps = ddim.unet(torch.cat([z, z_lq], 1), t, encoder_hidden_states=ddim.prompt_embeds.expand(2, -1, -1)).sample
        per_step.append({n: f[n]["output"] for n in names})
        z = sched.step(eps, t, z).prev_sample
    s = block_scores(ddim, z_lq, torch.zeros_like(z_lq))
    s2 = block_scores(ddim, z_lq, torch.randn_like(z_lq))
    blocks = [n for n, _ in ddim.prunable_blocks()]
    for n in names:
        j = blocks.index(n)
        cos = torch.stack([one_minus_cos(a[n], b[n]) for a, b in zip(per_step, per_step[1:])]).mean(0)
        kl = torch.stack([kl_channels(a[n], b[n]) for a, b in zip(per_step, per_step[1:])]).mean(0)
        assert torch.allclose(s["pgp_cos"][j], cos, atol=1e-5) and torch.allclose(s["pgp_kl"][j], kl, atol=1e-6)
    assert all(torch.equal(s[k], s2[k]) for k in s)
    assert s["removal_l1"].shape == (len(blocks), 2)


@torch.no_grad()
def test_strength_starts_from_the_noised_lq_latent():
    """strength < 1 (diffusers' img2img convention): only the last int(steps·strength) timesteps run, from the
    LQ latent noised to the first of them by the scheduler's own add_noise."""
    t = tiny_multistep_teacher(seed=0, steps=10, strength=0.3).eval()
    assert t.schedule().tolist() == [201, 101, 1] and t.timestep == 201
    z = t.encode(_lq(1))
    noise = t.noise(z.shape[1:], 1)
    assert torch.allclose(t.initial(z), t.scheduler.add_noise(z, noise, torch.tensor([201])), atol=1e-6)
    calls = []
    h = t.unet.register_forward_hook(lambda *a: calls.append(1))
    t.restore_latent(z)
    h.remove()
    assert len(calls) == 3
    with pytest.raises(ValueError, match="strength"):
        tiny_multistep_teacher(steps=10, strength=0.05)


@torch.no_grad()
def test_lq_residual_starts_at_the_lq_latent_and_survives_the_one_step_form(tmp_path):
    """lq_residual: x0 = z_LQ + UNet(…). With conv_out at zero every x0 estimate is z_LQ, so DDIM keeps the ε it
    reads off the start, ε' = (ε − √ᾱ_T z_LQ) / √(1−ᾱ_T), and ends at √ᾱ_final z_LQ + √(1−ᾱ_final) ε'; the
    one-step form returns z_LQ exactly; both survive save/load."""
    t = tiny_multistep_teacher(seed=0, steps=4, prediction_type="sample", lq_residual=True).eval()
    torch.nn.init.zeros_(t.unet.conv_out.weight)
    torch.nn.init.zeros_(t.unet.conv_out.bias)
    z = t.encode(_lq(2))
    a0 = t.scheduler.final_alpha_cumprod
    out = t.restore_latent(z)
    a_t = t.alphas_cumprod[t.timestep]
    eps = (t.noise(z.shape[1:], 2) - a_t.sqrt() * z) / (1 - a_t).sqrt()
    assert torch.allclose(out, a0.sqrt() * z + (1 - a0).sqrt() * eps, atol=1e-5)
    one = t.one_step()
    assert one.lq_residual and torch.allclose(one.restore_latent(z), z, atol=1e-6)
    save_teacher(t, tmp_path / "r")
    back = load_teacher(tmp_path / "r")
    assert back.lq_residual and torch.allclose(back.restore_latent(z), out, atol=1e-5)
    with pytest.raises(ValueError, match="lq_residual"):
        tiny_multistep_teacher(prediction_type="epsilon", lq_residual=True)


def test_multistep_bootstrap_resumes_to_identical_weights_and_starts_at_the_linear_denoiser():
    """The multi-step bootstrap (tiny): killed after its checkpoint at step 4 and resumed, it ends with the
    uninterrupted run's weights (validation best included); its residual prior σ_d is measured on the pairs."""
    from srcompress.models.metrics import bicubic_to
    from srcompress.models.teachers.bootstrap_config import BootstrapConfig, MultiStepRecipe
    from srcompress.models.teachers.bootstrap_multistep import train_tiny_multistep
    from tests.models.test_bootstrap_metrics import checkpoint_at_kill

    g = torch.Generator().manual_seed(1)
    hq = torch.rand(6, 3, 32, 32, generator=g)
    lq = bicubic_to(torch.nn.functional.avg_pool2d(hq, 4), 32)
    cfg = BootstrapConfig(vae_steps=2, restorer_steps=7, batch_size=2, vae_crop=16, eval_every=3, val_fraction=0.34,
                          checkpoint_every=4, vae_init="random", vae_channels=[8, 8], vae_norm_groups=4, tile=8,
                          latent_channels=4, multistep=MultiStepRecipe(unet_channels=[16, 32], norm_groups=8, steps=3,
                                                                       prediction_type="sample", lq_residual=True,
                                                                       val_pairs=2))
    quiet = lambda m: None  # noqa: E731
    full, s_full = train_tiny_multistep(lq, hq, cfg, log=quiet)
    assert full.residual_std > 0 and s_full["val_pairs"] == 2 and len(s_full["curves"]["restorer_loss"]) == 7
    state = checkpoint_at_kill(lambda save: train_tiny_multistep(lq, hq, cfg, log=quiet, checkpoint=save))
    assert state["step"] == 4
    resumed, s_res = train_tiny_multistep(lq, hq, cfg, log=quiet, resume=state)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert s_res["best_step"] == s_full["best_step"] and resumed.residual_std == full.residual_std
