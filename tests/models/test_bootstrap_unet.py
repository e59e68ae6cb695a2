"""The bootstrapped one-step SD-UNet teacher (configs/tiny-unet.yaml): it starts exactly at the identity, learns
the HQ − LQ residual, survives save/load with its residual scale, and resumes to identical weights."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.metrics import bicubic_to, psnr_y
from srcompress.models.teachers import load_teacher, save_teacher
from srcompress.models.teachers.bootstrap_config import BootstrapConfig, UNetRecipe
from srcompress.models.teachers.bootstrap_unet import train_tiny_unet
from srcompress.models.teachers.tiny import tiny_unet_teacher


def _pairs(n=6, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(n, 3, size, size, generator=g)
    hq = torch.nn.functional.avg_pool2d(hq, 3, 1, 1)  # some spatial correlation: a residual worth learning
    return bicubic_to(torch.nn.functional.avg_pool2d(hq, 4), size), hq


def _cfg(**kw) -> BootstrapConfig:
    base = dict(vae_steps=2, restorer_steps=7, batch_size=2, vae_crop=16, eval_every=3, val_fraction=0.34,
                checkpoint_every=4, vae_init="random", vae_channels=[8, 8], vae_norm_groups=4, tile=8,
                latent_channels=4, unet=UNetRecipe(unet_channels=[16, 32], norm_groups=8))
    return BootstrapConfig(**(base | kw))


@torch.no_grad()
def test_the_residual_one_step_unet_starts_at_the_identity_and_round_trips(tmp_path):
    t = tiny_unet_teacher(seed=0, prediction_type="sample", lq_residual=True).eval()
    z = t.encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    torch.nn.init.zeros_(t.unet.conv_out.weight)
    torch.nn.init.zeros_(t.unet.conv_out.bias)
    assert torch.equal(t.restore_latent(z), z)  # x0 = z_L + σ_d · 0, exactly
    torch.nn.init.normal_(t.unet.conv_out.weight, std=0.1)
    t.residual_std = 0.25
    out = t.restore_latent(z)
    raw = t.unet(z, torch.full((2,), 999), encoder_hidden_states=t.prompt_embeds.expand(2, -1, -1)).sample
    assert torch.allclose(out, z + 0.25 * raw, atol=1e-6)  # the residual, at σ_d
    back = load_teacher(save_teacher(t, tmp_path / "u"))
    assert back.lq_residual and back.residual_std == 0.25 and torch.allclose(back.restore_latent(z), out, atol=1e-6)
    with pytest.raises(ValueError, match="lq_residual"):
        tiny_unet_teacher(prediction_type="epsilon", lq_residual=True)


def test_unet_bootstrap_improves_on_its_start_and_resumes_to_identical_weights():
    from tests.models.test_bootstrap_metrics import checkpoint_at_kill

    lq, hq = _pairs()
    quiet = lambda m: None  # noqa: E731
    cfg = _cfg()
    full, s_full = train_tiny_unet(lq, hq, cfg, log=quiet)
    assert full.kind == "unet" and full.lq_residual and full.residual_std > 0
    assert len(s_full["curves"]["restorer_loss"]) == 7 and s_full["curves"]["val_psnr_y"][0][0] == 0
    state = checkpoint_at_kill(lambda save: train_tiny_unet(lq, hq, cfg, log=quiet, checkpoint=save))
    assert state["step"] == 4
    resumed, s_res = train_tiny_unet(lq, hq, cfg, log=quiet, resume=state)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert s_res["best_step"] == s_full["best_step"]
    # longer training learns the residual (the loss at the UNet's unit scale starts at 1: x0 = z_L) and the
    # checkpoint kept is the validation's best, the identity start among the candidates
    longer, s_long = train_tiny_unet(lq, hq, _cfg(restorer_steps=60, eval_every=20, restorer_lr=3e-3), log=quiet)
    loss = s_long["curves"]["restorer_loss"]
    assert sum(loss[-10:]) < 0.8 * sum(loss[:10]), loss
    curve = s_long["curves"]["val_psnr_y"]
    assert [s_long["best_step"], s_long["val_psnr_y"]] == list(max(curve, key=lambda h: h[1]))  # the best is kept
    with torch.no_grad():
        sr = longer(lq[:2])
    assert sr.shape == hq[:2].shape and float(psnr_y(sr, hq[:2]).mean()) > 10  # runs end to end as a teacher


def test_a_bootstrap_trains_one_teacher():
    from srcompress.models.teachers.bootstrap_config import MultiStepRecipe

    with pytest.raises(ValueError, match="multistep or unet"):
        _cfg(multistep=MultiStepRecipe())
    with pytest.raises(ValueError, match="bootstrap.unet set"):
        _cfg(num_layers=4)


def test_the_recipe_sets_the_unet_and_its_timestep():
    lq, hq = _pairs(n=3)
    t, _ = train_tiny_unet(lq, hq, _cfg(restorer_steps=0, vae_steps=0, unet=UNetRecipe(
        unet_channels=[8, 16], norm_groups=4, timestep=500)), log=lambda m: None)
    assert t.timestep == 500 and tuple(t.unet.config.block_out_channels) == (8, 16)
    assert t.unet.config.norm_num_groups == 4
