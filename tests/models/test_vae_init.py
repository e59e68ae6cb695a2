"""vae_init=pca: a latent-factor-4 AutoencoderKL whose encoder is an exact PCA of 4×4 cells (pinned to
scikit-learn's PCA and to pixel_unshuffle) and whose decoder is a fitted linear path copied in exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srcompress.models.teachers.bootstrap import BootstrapConfig, train_tiny_teacher
from srcompress.models.teachers.tiny import tiny_vae
from srcompress.models.teachers.vae_init import (LinearDecoder, build_pca_vae, cell_vectors, pca_basis,
                                                 pca_init_encoder, realize_decoder)


def _photos(n: int = 6, size: int = 64) -> torch.Tensor:
    """Crops of scikit-image's photos in [−1, 1] (natural-image statistics, not noise)."""
    from skimage import data

    imgs = []
    for name in ("astronaut", "coffee", "chelsea"):
        a = torch.from_numpy(np.asarray(getattr(data, name)(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        a = F.interpolate(a, scale_factor=0.25, mode="area")
        for k in range(n // 3):
            imgs.append(a[..., 4 * k: 4 * k + size, 4 * k: 4 * k + size])
    return torch.cat(imgs) * 2 - 1


def _vae():
    torch.manual_seed(0)
    return tiny_vae(16, (16, 16, 48), norm_groups=1)


def test_the_encoder_is_the_pca_projection_of_4x4_cells():
    x = _photos()
    basis, mean = pca_basis(x, 16)
    from sklearn.decomposition import PCA

    cells = F.pixel_unshuffle(F.pixel_unshuffle(x, 2), 2).permute(0, 2, 3, 1).reshape(-1, 48).numpy()
    ref = PCA(16, svd_solver="full").fit(cells.astype(np.float64))
    dots = np.abs((basis.numpy().astype(np.float64) * ref.components_).sum(1))  # same directions up to sign
    assert np.allclose(dots, 1, atol=1e-4) and np.allclose(mean.numpy(), ref.mean_, atol=1e-6)
    # the gather order: channel (k*4 + t1)*4 + t2 is pixel (2*t2_row + t1_row, 2*t2_col + t1_col) of colour k
    v = cell_vectors(torch.arange(48.0).reshape(1, 3, 4, 4))[0, :, 0, 0]
    k, t1, t2 = 2, 1, 2  # colour 2, first tap (0, 1), second tap (1, 0) → row 2, column 1
    assert v[(k * 4 + t1) * 4 + t2] == 2 * 16 + 2 * 4 + 1
    vae = _vae()
    pca_init_encoder(vae, basis, mean)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    want = ((cell_vectors(x).permute(0, 2, 3, 1) - mean) @ basis.T).permute(0, 3, 1, 2)
    assert z.shape == (len(x), 16, 16, 16)
    assert (z - want).abs().max() < 2e-3 * want.abs().max()


def test_the_linear_decoder_is_copied_exactly():
    vae = _vae()
    torch.manual_seed(1)
    lin = LinearDecoder(16, 16, 48, 6)
    realize_decoder(vae, lin)
    z = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        got, want = vae.decode(z).sample, lin(z)
    assert got.shape == (2, 3, 32, 32)
    assert (got - want).abs().max() < 2e-3 * want.abs().max()


def test_build_fits_a_decoder_and_the_vae_reconstructs_held_out_photos():
    x = _photos(9)
    train, held = x[:6], x[6:]
    vae = _vae()
    losses = build_pca_vae(vae, train, linear_steps=150, lr=3e-3, batch=4, crop=32,
                           g=torch.Generator().manual_seed(0), log=lambda s: None)
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        rec = vae.decode(vae.encode(held).latent_dist.mean).sample
    psnr = -10 * torch.log10(((rec - held) / 2).pow(2).mean())
    blur = F.interpolate(F.avg_pool2d(held, 4), scale_factor=4.0, mode="nearest")  # the cell means alone
    psnr_blur = -10 * torch.log10(((blur - held) / 2).pow(2).mean())
    assert psnr > psnr_blur + 3, (float(psnr), float(psnr_blur))


@pytest.mark.parametrize("attention", [False, True])
def test_the_construction_holds_with_sd3s_mid_block_attention(attention):
    """teacher.bootstrap.vae_attention: SD3's VAE has a mid-block self-attention in both halves; the construction
    starts each as the identity (its residual connection), so the encoder is still the PCA projection and the
    decoder still the copied linear decoder — with attention as without."""
    torch.manual_seed(0)
    vae = tiny_vae(16, (16, 16, 48), norm_groups=1, attention=attention)
    attn = [b.attentions[0] for b in (vae.encoder.mid_block, vae.decoder.mid_block)]
    assert all(a is not None for a in attn) == attention
    x = _photos()
    basis, mean = pca_basis(x, 16)
    pca_init_encoder(vae, basis, mean)
    torch.manual_seed(1)
    lin = LinearDecoder(16, 16, 48, 6)
    realize_decoder(vae, lin)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        want = ((cell_vectors(x).permute(0, 2, 3, 1) - mean) @ basis.T).permute(0, 3, 1, 2)
        got, ref = vae.decode(z).sample, lin(z)
    assert (z - want).abs().max() < 1e-3 * want.abs().max()
    assert (got - ref).abs().max() < 2e-3 * ref.abs().max()


def test_config_refuses_a_layout_the_construction_cannot_build():
    with pytest.raises(ValueError, match="vae_attention needs vae_init pca or random"):
        BootstrapConfig(vae_init="identity", vae_channels=[8], vae_attention=True)
    with pytest.raises(ValueError, match="vae_init=pca needs vae_channels"):
        BootstrapConfig(vae_init="pca", vae_channels=[16, 32, 48], latent_channels=16)
    with pytest.raises(ValueError, match="w > 2 \\* latent_channels"):
        BootstrapConfig(vae_init="pca", vae_channels=[16, 16, 32], latent_channels=16)
    BootstrapConfig(vae_init="pca", vae_channels=[16, 16, 48], latent_channels=16)


def test_a_bootstrapped_teacher_on_the_pca_vae_has_latent_factor_4():
    x = (_photos(6, 32) + 1) / 2
    lq = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4.0, mode="bicubic").clamp(0, 1)
    cfg = BootstrapConfig(vae_init="pca", vae_channels=[16, 16, 48], latent_channels=16, num_layers=2, heads=2,
                          patch_size=2, tile=8, tile_overlap=4, vae_linear_steps=20, vae_steps=5, vae_lr=2e-4,
                          vae_crop=16, restorer_steps=3, batch_size=2, eval_every=1, val_fraction=0)
    teacher, stats = train_tiny_teacher(lq, x, cfg, log=lambda s: None)
    assert teacher.latent_factor == 4
    assert len(stats["curves"]["vae_loss"]) == 20 + 5  # the linear fit, then the decoder's fine-tune
    z = teacher.encode(x[:2])
    assert z.shape == (2, 16, 8, 8)
    # the fit's learning rate is the one configured: a smaller one leaves the linear fit's loss higher
    slow = cfg.model_copy(update={"vae_linear_lr": 1e-5, "vae_steps": 0, "restorer_steps": 0})
    _, slow_stats = train_tiny_teacher(lq, x, slow, log=lambda s: None)
    assert slow_stats["curves"]["vae_loss"][-1] > 2 * stats["curves"]["vae_loss"][19]
