"""TinySR's VAE compression derived from the teacher's VAE (models/student/vae_prune.py) and its two training
phases (models/student/vae_train.py), on tiny seeded AutoencoderKLs built from config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from srcompress.models.student.tiny_vae import SeparableConv2d
from srcompress.models.student.vae_prune import PrunedAutoencoderKL, _rank1_init, prune_vae, pruned_config
from srcompress.models.student.vae_train import VAETrainer, VAETrainSettings, reconstruction


def _vae(seed: int = 0, widths=(16, 32, 32), groups: int = 8) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * len(widths),
                        up_block_types=("UpDecoderBlock2D",) * len(widths), latent_channels=4,
                        norm_num_groups=groups, layers_per_block=1).eval()
    for m in vae.modules():  # non-trivial norms, so that the criterion has something to rank
        if isinstance(m, nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return vae


def test_at_full_width_with_attention_and_dense_convs_it_is_the_teacher_vae():
    """Nothing pruned, nothing removed: diffusers' own AutoencoderKL output, to float round-off."""
    teacher = _vae()
    vae, report = prune_vae(teacher, width=1024, remove_attention=False, separable_encoder=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(vae(x).sample, teacher(x).sample, atol=1e-5)
    assert report["spaces_pruned"] == 0 and report["params"] == report["params_teacher"]


def test_the_channels_kept_are_those_with_the_largest_groupnorm_gains():
    """Plant the largest |γ| on four channels of the first stage's residual stream (every norm that reads it):
    those four channels are kept, and their weights are the teacher's."""
    teacher = _vae(widths=(16, 32, 32), groups=4)
    chosen = [1, 6, 9, 14]
    enc = teacher.encoder
    enc.down_blocks[0].resnets[0].norm1.weight.data[chosen] = 5.0  # the only norm reading that stream
    vae, _ = prune_vae(teacher, width=4, remove_attention=False, separable_encoder=False)
    assert torch.equal(vae.encoder.conv_in.weight, enc.conv_in.weight[chosen])
    assert torch.equal(vae.encoder.conv_in.bias, enc.conv_in.bias[chosen])
    # the identity shortcut carries the same stream: resnet 0's conv2 writes the same four channels
    assert torch.equal(vae.encoder.down_blocks[0].resnets[0].conv2.bias, enc.down_blocks[0].resnets[0].conv2.bias[chosen])
    assert torch.equal(vae.encoder.down_blocks[0].resnets[0].norm1.weight, torch.full((4,), 5.0))


def test_attention_is_removed_the_encoder_alone_is_separable_and_it_reloads(tmp_path):
    teacher = _vae()
    vae, report = prune_vae(teacher, width=8)
    assert all(a is None for a in vae.encoder.mid_block.attentions) and all(a is None for a in vae.decoder.mid_block.attentions)
    enc_k = [m for m in vae.encoder.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    assert enc_k and all(m.groups == m.in_channels for m in enc_k)  # only the depthwise halves are k×k
    assert any(isinstance(m, SeparableConv2d) for m in vae.encoder.modules())
    assert not any(isinstance(m, SeparableConv2d) for m in vae.decoder.modules())
    assert report["widths"] == [8, 8, 8] and report["params"] < report["params_teacher"] / 10
    vae.save_pretrained(tmp_path / "v", safe_serialization=True)
    again = PrunedAutoencoderKL.from_pretrained(tmp_path / "v", local_files_only=True, use_safetensors=True)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(reconstruction(again, x, 1.0, 0.0), reconstruction(vae, x, 1.0, 0.0))


def test_groupnorm_groups_divide_the_pruned_widths():
    cfg = pruned_config(_vae(widths=(16, 32, 32), groups=8), width=12)
    assert cfg["block_out_channels"] == (12, 12, 12) and cfg["norm_num_groups"] == 4


def test_separable_init_is_the_dense_conv_when_the_kernel_is_separable():
    """A kernel W[o, i] = P[o, i]·D[i] is reproduced exactly (reference: F.conv2d with the dense kernel); for a
    general kernel the rank-1 SVD init is closer to the dense output than the same factors with D shuffled."""
    torch.manual_seed(0)
    p, d = torch.randn(6, 5), torch.randn(5, 3, 3)
    conv = nn.Conv2d(5, 6, 3, padding=1)
    conv.weight.data = p[:, :, None, None] * d[None]
    sep = SeparableConv2d(conv)
    _rank1_init(sep, conv)
    x = torch.randn(2, 5, 9, 9)
    with torch.no_grad():
        assert torch.allclose(sep(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5)
        general = nn.Conv2d(5, 6, 3, padding=1)
        _rank1_init(sep, general)
        err = (sep(x) - general(x)).norm()
        sep.depthwise.weight.data = sep.depthwise.weight.data.flip(0)
        assert err < (sep(x) - general(x)).norm()


def _trainer(perturb: int = 0) -> VAETrainer:
    teacher = _vae(0)
    vae, _ = prune_vae(teacher, width=8)
    if perturb:  # another starting point: whatever matches afterwards came from a loaded state
        torch.manual_seed(perturb)
        for p in vae.parameters():
            p.data.add_(torch.randn_like(p), alpha=0.1)
    return VAETrainer(vae, teacher, 0.5, 0.1, VAETrainSettings(enc_lr=1e-3, dec_lr=1e-3, perceptual_weight=0,
                                                                gan_weight=0.1), disc=_disc())


def _disc() -> nn.Module:
    from srcompress.models.student.gan import PatchDiscriminator

    torch.manual_seed(1)
    return PatchDiscriminator(width=4, layers=2)


def test_the_encoder_phase_fits_the_teacher_latents_and_the_decoder_phase_the_pixels():
    tr = _trainer()
    x = torch.rand(4, 3, 16, 16)
    first = tr.encoder_step(x)
    for _ in range(30):
        last = tr.encoder_step(x)
    assert last < 0.7 * first
    dec0 = tr.decoder_step(x)
    for _ in range(30):
        dec = tr.decoder_step(x)
    assert dec < dec0 and tr.steps == {"encoder": 31, "decoder": 31}
    assert len(tr.history["decoder.gan_d"]) == 31 and tr.history["decoder.gan_d"][-1] != 0.0


def test_a_resumed_trainer_ends_where_the_uninterrupted_one_does():
    xs = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    full = _trainer()
    for i, x in enumerate(xs):
        (full.encoder_step if i < 3 else full.decoder_step)(x)
    part = _trainer()
    for x in xs[:4]:
        (part.encoder_step if part.steps["encoder"] < 3 else part.decoder_step)(x)
    resumed = _trainer(perturb=5)
    resumed.load_state_dict(part.state_dict())
    for x in xs[4:]:
        resumed.decoder_step(x)
    for (n, a), b in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), n
    assert resumed.history == full.history


def test_width_must_be_positive_and_one_per_block():
    for bad in (0, [8, 8], [8, 0, 8]):
        with pytest.raises(ValueError, match="width must be a positive channel count or one per block"):
            prune_vae(_vae(), width=bad)


def test_per_block_widths_cap_each_block_and_keep_its_largest_gains():
    """``[8, 24, 24]`` on a (16, 32, 32) teacher: block 0 keeps 8 channels, the two 32-wide blocks 24 each; in
    block 1's first resnet the inner space keeps the 24 channels with the largest |γ| of its norm, with the
    teacher's weights. With caps at least the teacher's widths the result is the teacher's VAE."""
    teacher = _vae(widths=(16, 32, 32), groups=4)
    vae, report = prune_vae(teacher, width=[8, 24, 24], remove_attention=False, separable_encoder=False)
    assert list(vae.config.block_out_channels) == [8, 24, 24] and report["width"] == [8, 24, 24]
    inner, kept = teacher.encoder.down_blocks[1].resnets[0], vae.encoder.down_blocks[1].resnets[0]
    assert kept.conv1.weight.shape[:2] == (24, 8) and kept.conv_shortcut.weight.shape[:2] == (24, 8)
    top = sorted(inner.norm2.weight.detach().abs().argsort(descending=True)[:24].tolist())
    assert torch.equal(kept.norm2.weight, inner.norm2.weight[top])
    assert torch.equal(kept.conv1.bias, inner.conv1.bias[top])
    full, _ = prune_vae(teacher, width=[16, 64, 32], remove_attention=False, separable_encoder=False)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(full(x).sample, teacher(x).sample, atol=1e-5)


def test_blocks_sharing_a_residual_stream_must_keep_one_width():
    with pytest.raises(ValueError, match="blocks 1 and 2 .* share a residual stream"):
        prune_vae(_vae(widths=(16, 32, 32)), width=[8, 16, 24])


def test_the_planned_architecture_is_the_pruned_model():
    """``srcompress plan`` and the budget count ``pruned_architecture`` (no weights, meta device too): it is the
    model ``prune_vae`` builds, parameter for parameter."""
    from srcompress.models.student.vae_prune import pruned_architecture

    teacher = _vae()
    built, _ = prune_vae(teacher, width=8)
    with torch.device("meta"):
        planned = pruned_architecture(teacher, width=8)
    assert {k: tuple(v.shape) for k, v in planned.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in built.state_dict().items()}


def test_a_teacher_with_separable_kernels_keeps_its_encoder_exactly():
    """Make every k×k kernel of the teacher's encoder separable (W[o, i] = P[o, i]·D[i]); at full width with
    attention kept, the SepConv encoder prune_vae builds then computes the teacher's latents (diffusers'
    forward is the reference), because each SepConv starts from its dense kernel's rank-1 factors."""
    teacher = _vae()
    g = torch.Generator().manual_seed(3)
    for m in teacher.encoder.modules():
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
            o, i, kh, kw = m.weight.shape
            p, d = torch.randn(o, i, generator=g) * 0.3, torch.randn(i, kh, kw, generator=g) * 0.3
            m.weight.data = p[:, :, None, None] * d[None]
    vae, _ = prune_vae(teacher, width=1024, remove_attention=False, separable_encoder=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(vae.encode(x).latent_dist.mean, teacher.encode(x).latent_dist.mean, atol=1e-4)


def test_least_squares_refit_restores_a_pruned_constructed_encoder():
    """A latent-factor-4 VAE built by the pca construction (models/teachers/vae_init.py) keeps its data in the
    first channels, with constant channels steadying a one-group GroupNorm. Pruned to [16, 16, 33] the data
    survive but the norm's statistics change, so the latents are off by a scale; re-fitting the encoder's
    conv_out by least squares (``refit_output_convs``) makes them the teacher's again, and the decoder's output
    moves towards the teacher decoder's."""
    from srcompress.models.student.vae_prune import refit_output_convs
    from srcompress.models.teachers.tiny import tiny_vae
    from srcompress.models.teachers.vae_init import build_pca_vae

    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=g) * 2 - 1
    teacher = tiny_vae(16, (32, 32, 96), 1)
    build_pca_vae(teacher, images, 5, 2e-3, 4, 16, g, log=lambda s: None)
    held = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    vae, _ = prune_vae(teacher, [16, 16, 33], remove_attention=True, separable_encoder=False)
    with torch.no_grad():
        ref = teacher.encode(held).latent_dist.mean
        off = (vae.encode(held).latent_dist.mean - ref).abs().max()
    stats = refit_output_convs(vae, teacher, images)
    with torch.no_grad():
        err = (vae.encode(held).latent_dist.mean - ref).abs().max()
    assert off > 0.5 * ref.abs().max() and err < 1e-2 * ref.abs().max(), (off, err)  # 175% → 0.2% here
    assert stats["encoder_rms_after"] < 1e-2 * stats["encoder_rms_before"]
    assert stats["decoder_rms_after"] < stats["decoder_rms_before"]


@pytest.mark.parametrize("total", [2, 9, 11, 57, 400])
def test_the_one_cycle_schedule_is_torchs_onecyclelr(total):
    """``scheduled_lr`` computes the rate from the step counter (a resume needs no scheduler state); it must be
    torch's OneCycleLR at pct_start 0.1 step for step, and ``constant`` the base rate."""
    from srcompress.models.student.vae_train import scheduled_lr

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total, pct_start=0.1)
    ref = []
    for _ in range(total):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [scheduled_lr(3e-4, k, total, "one_cycle") for k in range(total)]
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert {scheduled_lr(3e-4, k, total, "constant") for k in range(total)} == {3e-4}


def test_the_trainer_applies_the_schedule_per_phase():
    """One-cycle over each phase's own step count: the encoder's first step runs at enc_lr/25, the decoder's
    first at dec_lr/25 (its phase restarts the cycle), and a constant schedule leaves both rates as set."""
    teacher = _vae(0)
    vae, _ = prune_vae(teacher, width=16)
    s = VAETrainSettings(enc_lr=1e-3, dec_lr=2e-3, gan_weight=0, perceptual_weight=0, schedule="one_cycle",
                         encoder_steps=20, decoder_steps=30)
    tr = VAETrainer(vae, teacher, 1.0, 0.0, s)
    x = torch.rand(2, 3, 16, 16)
    tr.encoder_step(x)
    tr.decoder_step(x)
    assert tr.opt_enc.param_groups[0]["lr"] == pytest.approx(1e-3 / 25)
    assert tr.opt_dec.param_groups[0]["lr"] == pytest.approx(2e-3 / 25)
    tr.encoder_step(x)
    assert tr.opt_enc.param_groups[0]["lr"] == pytest.approx(1e-3)  # step 1 of 20 is the peak (0.1·20 − 1 = 1)
    flat = VAETrainer(vae, teacher, 1.0, 0.0, VAETrainSettings(enc_lr=1e-3, gan_weight=0, perceptual_weight=0))
    flat.encoder_step(x)
    assert flat.opt_enc.param_groups[0]["lr"] == 1e-3
