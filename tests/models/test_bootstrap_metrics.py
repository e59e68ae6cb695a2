"""The tiny-teacher trainer (smoke, 2 steps per phase) and the PSNR-Y metric against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srcompress.models.metrics import bicubic_to, psnr_y
from srcompress.models.teachers.bootstrap import train_tiny_teacher
from srcompress.tasks.common.teacher_config import BootstrapConfig


def test_bootstrap_smoke_trains_both_phases():
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(4, 3, 32, 32, generator=g)
    lq = bicubic_to(torch.nn.functional.avg_pool2d(hq, 4), 32)
    cfg = BootstrapConfig(vae_steps=2, restorer_steps=2, num_layers=2, batch_size=2, vae_crop=16)
    before = [p.clone() for p in train_tiny_teacher(lq, hq, cfg.model_copy(update={"vae_steps": 0, "restorer_steps": 0}),
                                                    log=lambda m: None)[0].vae.parameters()]
    teacher, stats = train_tiny_teacher(lq, hq, cfg, log=lambda m: None)
    assert stats["train_pairs"] == 4 and math.isfinite(stats["vae_loss_final"]) and stats["scaling_factor"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher.vae.parameters()))  # the VAE trained
    assert teacher.vae.config.scaling_factor == stats["scaling_factor"] == teacher.convention.scaling_factor
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert teacher(lq).shape == hq.shape


def test_psnr_y_matches_the_matlab_convention():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 16, 16)).astype(np.float64) / 255
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    # BasicSR bgr2ycbcr(only_y=True) on RGB in [0,1]: 16 + (65.481 R + 128.553 G + 24.966 B)
    y = lambda x: 16 + 65.481 * x[:, 0] + 128.553 * x[:, 1] + 24.966 * x[:, 2]  # noqa: E731
    mse = ((y(a) - y(b)) ** 2).mean(axis=(1, 2))
    ref = 10 * np.log10(255**2 / mse)
    ours = psnr_y(torch.from_numpy(b), torch.from_numpy(a)).numpy()
    assert np.allclose(ours, ref, atol=1e-9)
    cropped = psnr_y(torch.from_numpy(b), torch.from_numpy(a), crop_border=4).numpy()
    mse_c = ((y(a)[:, 4:-4, 4:-4] - y(b)[:, 4:-4, 4:-4]) ** 2).mean(axis=(1, 2))
    assert np.allclose(cropped, 10 * np.log10(255**2 / mse_c))


def checkpoint_at_kill(train) -> dict:
    """Run ``train(save)`` with a ``save`` that stores the first checkpoint and then dies (a kill right after
    it); return that checkpoint as a resumed run would read it (tensors and plain types only)."""
    import io

    saved: list[bytes] = []

    class Killed(Exception):
        pass

    def save_then_die(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())
        raise Killed

    with pytest.raises(Killed):
        train(save_then_die)
    return torch.load(io.BytesIO(saved[-1]), weights_only=True)


def test_bootstrap_resumes_from_a_checkpoint_to_identical_weights():
    """Kill after the checkpoint at step 4 (simulated by raising), resume: the result equals an uninterrupted run."""
    g = torch.Generator().manual_seed(1)
    hq = torch.rand(6, 3, 32, 32, generator=g)
    lq = bicubic_to(torch.nn.functional.avg_pool2d(hq, 4), 32)
    cfg = BootstrapConfig(vae_steps=2, restorer_steps=7, num_layers=1, batch_size=2, vae_crop=16, eval_every=2,
                          val_fraction=0.0, checkpoint_every=4, vae_init="random", vae_channels=[8, 8],
                          vae_norm_groups=4, tile=8, patch_size=2)
    quiet = lambda m: None  # noqa: E731
    full, _ = train_tiny_teacher(lq, hq, cfg, log=quiet)

    state = checkpoint_at_kill(lambda save: train_tiny_teacher(lq, hq, cfg, log=quiet, checkpoint=save))
    assert state["step"] == 4
    resumed, stats = train_tiny_teacher(lq, hq, cfg, log=quiet, resume=state)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert stats["val_pairs"] == 0  # the final weights are the last step's: the whole resumed trajectory counts


def test_grid_ratio_sees_a_patch_grid_a_photo_does_not_have():
    """The measurable form of "no visible patch grid": a photo scores ≈ 1 at any period; the same photo with
    its every 8th column and row darkened by 3% (a faint grid a person sees when zoomed in) scores > 1.08 at
    period 8 and much less at an unrelated period; 8-px blocks (nearest upsampling) score far above 1."""
    from skimage import data

    from srcompress.models.metrics import grid_ratio

    a = torch.from_numpy(np.asarray(data.astronaut(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    assert 0.95 < grid_ratio(a, 8) < 1.05 and 0.95 < grid_ratio(a, 4) < 1.05
    g = a.clone()
    g[..., :, 7::8] *= 0.97
    g[..., 7::8, :] *= 0.97
    assert grid_ratio(g, 8) > 1.08 and grid_ratio(g, 8) > grid_ratio(g, 5) + 0.05
    blocks = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(a, 8), scale_factor=8, mode="nearest")
    assert grid_ratio(blocks, 8) > 100
    with pytest.raises(ValueError, match="8-px period"):
        grid_ratio(a[..., :8, :8], 8)


def test_boundary_loss_weighs_only_the_token_seams():
    """A difference that steps at the token boundaries costs; one that steps inside the tokens, or is the same
    constant everywhere, does not (the seam term of the bootstrap restorer)."""
    from srcompress.models.metrics import boundary_loss, boundary_steps

    target = torch.zeros(1, 1, 8, 8)
    blocks = torch.zeros(1, 1, 8, 8)
    blocks[..., :, 2:4] = 1.0  # a step from column 1 to 2 and from 3 to 4: token boundaries of patch 2
    inside = torch.zeros(1, 1, 8, 8)
    inside[..., :, 3:] = 1.0   # one step, from column 2 to 3: inside a token
    assert boundary_steps(target, 2).shape == (1, 2 * 3 * 8)
    assert boundary_loss(blocks, target, 2) > 0 and boundary_loss(inside, target, 2) == 0
    assert boundary_loss(target + 5.0, target, 2) == 0
    assert boundary_loss(inside, target, 3) > 0  # …which is a seam of a 3-cell grid
