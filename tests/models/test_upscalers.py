"""Upscalers: any input size, tile capping, tiled ≡ untiled when it fits, seamless blending, VAE tiling, colour fix."""

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
def test_tiled_large_image_is_blended_seamlessly():
    # The real random-weight UNet sees the whole latent through attention and GroupNorm, so its tiled output
    # differs from the untiled one everywhere and a seam statistic cannot tell blending from overwriting. A
    # translation-equivariant restore step (a 3×3 conv on the latent) can: it is wrong only on each tile's
    # outermost ring, where the Gaussian weights vanish, so the blended result equals the untiled one, while
    # overwritten tiles leave wrong latent columns at every tile start (decoded: max error ~0.5).
    t = tiny_unet_teacher().eval()
    x = bicubic_up(_lr(10, 10), 4)  # a smooth 40-px LR → 160 px → 40 latents = 16 + 3·8: 4×4 tiles of 16
    tiled_up, whole_up = DiffusionSR(t, tile=16, tile_overlap=8), DiffusionSR(t, tile=None)
    real = tiled_up(x)  # the real backbone on a batch of tiles: right size, finite
    assert real.shape == (1, 3, 160, 160) and torch.isfinite(real).all()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    seen = []  # latent sizes the restore step ran on: proves the tiled path really tiled
    t.restore_tile = lambda z: seen.append(tuple(z.shape)) or conv(z)  # instance attribute: this object only
    tiled = tiled_up(x)
    assert seen == [(16, 4, 16, 16)], seen  # one batched call on the 4×4 tiles
    whole = whole_up(x)
    assert whole.std() > 0.05  # the check below compares real images, not two flat ones
    err = (tiled - whole).abs().max().item()
    assert err < 1e-3, err


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


@torch.no_grad()
def test_channels_last_changes_the_layout_not_the_output():
    """evaluate.inference.channels_last: the VAE's convolution weights and the tensors it sees are channels-last
    (the layout that runs narrow convolutions faster on CPUs), the output equals the default layout's to float
    round-off, and the description records it."""
    import copy

    t = tiny_sd3_teacher().eval()
    plain = DiffusionSR(t, scale=4, tile=None)
    fast = DiffusionSR(copy.deepcopy(t), scale=4, tile=None, channels_last=True)
    convs = [m for m in fast.model.vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    seen = []
    hook = fast.model.vae.encoder.conv_in.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    x = _lr(13, 21)
    a, b = plain(x), fast(x)
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert torch.allclose(a, b, atol=1e-4)
    assert (plain.describe()["memory_format"], fast.describe()["memory_format"]) == ("contiguous", "channels_last")
