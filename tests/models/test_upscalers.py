"""Upscalers: any input size, tile capping, tiled ≡ untiled when it fits, bounded seams, VAE tiling, colour fix."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher
from srcompress.models.upscalers import Bicubic, DiffusionSR, bicubic_up, max_latent_tile


def _lr(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_odd_sizes_give_exact_output_size():
    teacher = tiny_sd3_teacher().eval()
    up = DiffusionSR(teacher, scale=4, tile=None)
    for h, w in [(13, 21), (9, 9), (17, 30)]:
        sr = up(_lr(h, w))
        assert sr.shape == (1, 3, 4 * h, 4 * w)
        assert torch.isfinite(sr).all() and sr.min() >= 0 and sr.max() <= 1
    assert Bicubic(4)(_lr(13, 21)).shape == (1, 3, 52, 84)


def test_tile_is_capped_at_the_positional_embedding():
    t = tiny_sd3_teacher(tile=16, patch_size=2)
    assert max_latent_tile(t.backbone) == 16
    up = DiffusionSR(t, tile=64, tile_overlap=8)
    assert (up.tile, up.tile_overlap, up.describe()["tile_requested"]) == (16, 8, 64)
    assert DiffusionSR(t, tile=None).tile == 16  # bounded embeddings cannot run untiled beyond their size
    assert max_latent_tile(tiny_unet_teacher().backbone) is None


@torch.no_grad()
def test_tiled_equals_untiled_when_the_image_fits_in_one_tile():
    t = tiny_unet_teacher().eval()
    x = _lr(16, 16)  # 64 px → 16 latents (VAE ×4) < tile 64
    assert torch.equal(DiffusionSR(t, tile=64)(x), DiffusionSR(t, tile=None)(x))


@torch.no_grad()
def test_tiled_large_image_has_no_seams():
    t = tiny_unet_teacher().eval()
    x = bicubic_up(_lr(10, 10), 4)  # a smooth 40-px LR → 160 px → 40 latents: 4×4 tiles of 16
    tiled_up = DiffusionSR(t, tile=16, tile_overlap=8)
    whole = DiffusionSR(t, tile=None)(x)
    tiled = tiled_up(x)
    assert tiled.shape == whole.shape == (1, 3, 160, 160)
    # Tiles see less context, so values differ a little, but blending must not create edges: the horizontal
    # gradient at tile boundaries is no larger than elsewhere in the tiled output (latent ×4 → pixel ×4).
    dx = (tiled[..., 1:] - tiled[..., :-1]).abs().mean(dim=(0, 1, 2))
    starts = [4 * s for s in (8, 16, 24) if 4 * s < dx.numel()]
    assert max(dx[s - 1].item() for s in starts) < 3 * dx.median().item() + 1e-3
    assert (tiled - whole).abs().mean() < 0.25  # random attention weights: context matters a lot


@torch.no_grad()
def test_vae_tiling_is_scoped_to_the_call():
    t = tiny_unet_teacher().eval()
    x = _lr(24, 24)
    plain = DiffusionSR(t, tile=None)(x)
    up = DiffusionSR(t, tile=None, vae_tiling=True, vae_tile=32)
    out = up(x)
    assert out.shape == plain.shape
    assert not t.vae.use_tiling  # the shared model object is left as it was
    assert 0 < (out - plain).abs().mean() < 0.3  # tiled VAE really ran (GroupNorm/attention see less context)
    assert up.describe()["vae_tile"] == 32


@torch.no_grad()
def test_color_fix_is_applied_against_the_upsampled_lr():
    t = tiny_sd3_teacher().eval()
    x = _lr(16, 16, seed=3)
    sr = DiffusionSR(t, tile=None, color_fix="adain")(x)
    ref = bicubic_up(x, 4)
    assert torch.allclose(sr.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=0.02)
    with pytest.raises(ValueError, match="unknown color fix"):
        DiffusionSR(t, tile=None, color_fix="hist")(x)
