"""Student build: block surgery equals the masked teacher, streamlining is exact, the folder round-trips through
``from_pretrained``, the tiny VAE learns a factor-8 AutoencoderKL, the phase adapter starts as the identity."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.search import MaskSearch
from srcompress.models.student.phase import PhaseExchangeAdapter
from srcompress.models.student.streamline import CachedModulation, StreamlinedSD3
from srcompress.models.student.student import build_student, load_student, save_student
from srcompress.models.student.tiny_vae import SeparableAutoencoderTiny, tiny_vae_config, tiny_vae_for, train_tiny_vae
from srcompress.models.teachers.tiny import tiny_sd3_teacher


def _randomise(teacher, seed=1):
    """Random weights everywhere (diffusers zero-inits adaLN and proj_out: the test must see every path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in teacher.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return teacher.eval()


def _teacher(**kw):
    return _randomise(tiny_sd3_teacher(seed=0, num_layers=4, latent_channels=8, head_dim=8, heads=2, patch_size=2,
                                       vae_channels=(16,), vae_norm_groups=1, vae_identity=True, tile=8, **kw))


def test_all_ones_mask_student_equals_teacher():
    t = _teacher()
    s = build_student(t, [1, 1, 1, 1])
    z = torch.randn(2, 8, 8, 8)
    assert torch.allclose(s.restore_tile(z), t.restore_tile(z), atol=1e-6)
    assert sum(p.numel() for p in s.backbone.parameters()) == sum(p.numel() for p in t.backbone.parameters())


def test_pruned_student_equals_masked_teacher_whichever_block_is_last():
    t = _teacher()
    z = torch.randn(2, 8, 8, 8)
    masker = DepthMasker(t)
    for mask in ([1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]):
        s = build_student(t, mask)
        assert len(s.backbone.transformer_blocks) == 2
        assert s.backbone.transformer_blocks[-1].context_pre_only
        with torch.no_grad(), masker.masked(torch.tensor(mask, dtype=torch.float32)):
            ref = t.restore_tile(z)
        assert torch.allclose(s.restore_tile(z), ref, atol=1e-5), mask
        assert sum(p.numel() for p in s.backbone.parameters()) < sum(p.numel() for p in t.backbone.parameters())


def test_search_lora_is_merged_before_the_blocks_are_copied():
    t = _teacher()
    search = MaskSearch(_teacher(), n=1, m=2, lora_rank=2, lora_alpha=4, fixed_mask=torch.tensor([1.0, 0, 0, 1]))
    with torch.no_grad():
        for n, p in search.teacher.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    z = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        ref = search(z, mask=search.fixed_mask)
    s = build_student(t, [1, 0, 0, 1], lora_state=search.lora_state(), lora_rank=2, lora_alpha=4)
    assert torch.allclose(s.restore_tile(z), ref, atol=1e-5)
    plain = build_student(t, [1, 0, 0, 1])
    assert not torch.allclose(plain.restore_tile(z), ref, atol=1e-3)  # the LoRA mattered


def test_streamlined_equals_unstreamlined_and_folds_back_exactly():
    t = _teacher()
    s = build_student(t, [1, 0, 1, 1])
    fast = build_student(t, [1, 0, 1, 1], streamline=True)
    assert isinstance(fast.backbone, StreamlinedSD3)
    names = {n.split(".")[0] for n, _ in fast.backbone.named_modules() if n}
    assert "time_text_embed" not in names and "context_embedder" not in names
    assert all(isinstance(b.norm1.linear, CachedModulation) for b in fast.backbone.transformer_blocks)
    assert isinstance(fast.backbone.norm_out.linear, CachedModulation)
    z = torch.randn(3, 8, 8, 8)
    assert torch.allclose(fast.restore_tile(z), s.restore_tile(z), atol=1e-5)
    assert sum(p.numel() for p in fast.backbone.parameters()) < sum(p.numel() for p in s.backbone.parameters())
    with torch.no_grad():  # trained modulations fold back too
        fast.backbone.transformer_blocks[0].norm1.linear.value.add_(0.1)
    back = fast.backbone.to_diffusers()
    ref = fast.backbone(z)
    out = back(hidden_states=z, encoder_hidden_states=s.prompt_embeds.expand(3, -1, -1),
               pooled_projections=s.pooled_prompt_embeds.expand(3, -1), timestep=torch.full((3,), 1000.0)).sample
    assert torch.allclose(out, ref, atol=1e-5)


def test_student_folder_loads_with_from_pretrained(tmp_path):
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    t = _teacher()
    s = build_student(t, [0, 1, 1, 0], streamline=True, phase_adapter=True)
    with torch.no_grad():
        s.phase.fuse.weight.normal_(0, 0.1)
    save_student(s, tmp_path / "st")
    assert not list((tmp_path / "st").rglob("*.bin")) and not list((tmp_path / "st").rglob("*.pt"))
    tr = SD3Transformer2DModel.from_pretrained(tmp_path / "st", subfolder="transformer", local_files_only=True)
    assert tr.config.num_layers == 2
    AutoencoderKL.from_pretrained(tmp_path / "st", subfolder="vae", local_files_only=True)
    back = load_student(tmp_path / "st")
    assert back.streamlined and back.phase is not None and back.kept == ["transformer_blocks.1", "transformer_blocks.2"]
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(back(x), s(x), atol=1e-5)
    assert torch.allclose(load_student(tmp_path / "st", streamline=False)(x), s(x), atol=1e-5)


def test_phase_adapter_starts_as_identity_and_learns():
    a = PhaseExchangeAdapter(4)
    z, zl = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(a(z, zl), z)
    target = z + 0.1 * torch.randn_like(z)
    opt = torch.optim.Adam(a.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = (a(z, zl) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_tiny_vae_learns_a_factor8_autoencoderkl(tmp_path):
    t = tiny_sd3_teacher(seed=0, num_layers=2, latent_channels=4, head_dim=8, heads=2, vae_channels=(8, 8, 8, 8),
                         vae_norm_groups=4)
    assert t.latent_factor == 8
    vae = tiny_vae_for(t, width=16, blocks=1)
    assert isinstance(vae, SeparableAutoencoderTiny)
    dense = sum(p.numel() for p in SeparableAutoencoderTiny(**tiny_vae_config(4, 8, 16, 1, separable=False)).parameters())
    assert sum(p.numel() for p in vae.parameters()) < dense / 3  # depthwise-separable convs
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=64, mode="bilinear")
    x = images[:2]
    z_t = t.encode(x)
    before = (vae.encode(x * 2 - 1).latents - z_t).abs().mean()
    stats = train_tiny_vae(vae, t, images, steps=60, lr=3e-3, batch=4, crop=32)
    after = (vae.encode(x * 2 - 1).latents - z_t).abs().mean()
    assert vae.encode(x * 2 - 1).latents.shape == z_t.shape == (2, 4, 8, 8)
    assert after < 0.7 * before and stats["decoder_l1"] is not None
    vae.save_pretrained(tmp_path / "v")
    again = SeparableAutoencoderTiny.from_pretrained(tmp_path / "v")
    assert torch.allclose(again.encode(x * 2 - 1).latents, vae.encode(x * 2 - 1).latents, atol=1e-6)


# -- UNet teachers: BK-SDM-style surgery (models/student/unet_surgery.py) ------------------------------------

def _unet_masked(teacher, names, masked, z):
    mask = torch.tensor([0.0 if n in masked else 1.0 for n in names])
    with torch.no_grad(), DepthMasker(teacher).masked(mask):
        return teacher.restore_tile(z)


def test_unet_all_ones_mask_student_equals_teacher_and_round_trips(tmp_path):
    from diffusers import UNet2DConditionModel

    from srcompress.models.teachers.tiny import tiny_unet_teacher

    t = tiny_unet_teacher(seed=0).eval()
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    s = build_student(t, [1] * 7)
    with torch.no_grad():
        assert torch.equal(s.restore_tile(z), t.restore_tile(z))
    assert s.surgery == {"removed": [], "structural": [], "unrealised": []}
    save_student(build_student(t, [1, 1, 0, 0, 1, 1, 1]), tmp_path / "s")
    back = load_student(tmp_path / "s")
    assert back.backbone_kind == "unet" and back.backbone.mid_block.__class__.__name__ == "UNetMidBlock2D"
    assert UNet2DConditionModel.from_pretrained(tmp_path / "s", subfolder="unet").config.mid_block_type == "UNetMidBlock2D"
    with torch.no_grad():
        assert torch.equal(back.restore_tile(z), build_student(t, [1, 1, 0, 0, 1, 1, 1]).restore_tile(z))


def test_unet_surgery_is_exact_where_the_config_can_express_the_mask():
    """Whole attention groups, the whole mid block, or its attention with one resnet: the student computes what
    the masked teacher computes. One attention of two stays (unrealised), and so does a resnet whose attention
    the mask kept."""
    from srcompress.models.teachers.tiny import tiny_unet_teacher

    t = tiny_unet_teacher(seed=0).eval()
    names = [n for n, _ in t.prunable_blocks()]
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    full = sum(p.numel() for p in t.backbone.parameters())
    exact = [{"down_blocks.0.attentions.0"}, {"up_blocks.1.attentions.0", "up_blocks.1.attentions.1"},
             {"mid_block.attentions.0", "mid_block.resnets.1"},
             {"mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"}]
    for masked in exact:
        s = build_student(t, [0.0 if n in masked else 1.0 for n in names])
        assert set(s.surgery["removed"]) == masked and not s.surgery["unrealised"], masked
        assert sum(p.numel() for p in s.backbone.parameters()) < full
        with torch.no_grad():
            assert torch.allclose(s.restore_tile(z), _unet_masked(t, names, masked, z), atol=1e-5), masked
    s = build_student(t, [0.0 if n in {"up_blocks.1.attentions.0", "down_blocks.0.resnets.0"} else 1.0 for n in names])
    assert s.surgery["unrealised"] == ["down_blocks.0.resnets.0", "up_blocks.1.attentions.0"]
    assert sum(p.numel() for p in s.backbone.parameters()) == full


def test_unet_down_pair_removal_shrinks_the_mirrored_up_block_and_copies_weights_by_name():
    """BK-SDM's R-A pair removal (lossy by design): one layer fewer in the down block and in its mirror, the
    first and last up resnets keep their teacher weights, and the student still runs."""
    from srcompress.models.teachers.tiny import tiny_unet_teacher

    t = tiny_unet_teacher(seed=0, layers_per_block=2).eval()
    names = [n for n, _ in t.prunable_blocks()]
    s = build_student(t, [0.0 if n == "down_blocks.1.resnets.1" else 1.0 for n in names])
    assert tuple(s.backbone.config.layers_per_block) == (2, 1)
    assert s.surgery["removed"] == ["down_blocks.1.resnets.1"] and s.surgery["structural"] == ["up_blocks.0.resnets.1"]
    assert len(s.backbone.up_blocks[0].resnets) == 2 and len(s.backbone.up_blocks[1].resnets) == 3
    tsd, ssd = t.backbone.state_dict(), s.backbone.state_dict()
    assert torch.equal(ssd["up_blocks.0.resnets.1.conv1.weight"], tsd["up_blocks.0.resnets.2.conv1.weight"])
    assert torch.equal(ssd["down_blocks.1.resnets.0.conv1.weight"], tsd["down_blocks.1.resnets.0.conv1.weight"])
    out = s.restore_tile(torch.randn(1, 4, 16, 16))
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    # the mirror drops a middle pair whose attention the mask removed before one it kept; what the mask kept
    # and the surgery took is reported as structural, never as kept
    t3 = tiny_unet_teacher(seed=0, layers_per_block=3).eval()
    names3 = [n for n, _ in t3.prunable_blocks()]
    masked = {"down_blocks.0.resnets.1", "down_blocks.0.attentions.1", "up_blocks.1.attentions.1"}
    s3 = build_student(t3, [0.0 if n in masked else 1.0 for n in names3])
    assert set(s3.surgery["removed"]) == masked and not s3.surgery["unrealised"]
    assert s3.surgery["structural"] == ["up_blocks.1.resnets.1"]
    s4 = build_student(t3, [0.0 if n in {"down_blocks.0.resnets.1", "down_blocks.0.attentions.1"} else 1.0
                            for n in names3])
    assert "up_blocks.1.attentions.2" in s4.surgery["structural"]
    assert not set(s4.surgery["structural"]) & set(s4.kept)


def test_unet_students_refuse_streamlining_and_units_no_mask_can_remove():
    import pytest

    from srcompress.models.student.unet_surgery import prune_unet
    from srcompress.models.teachers.tiny import tiny_unet_teacher

    t = tiny_unet_teacher(seed=0)
    with pytest.raises(ValueError, match="distill.streamline=false"):
        build_student(t, [1] * 7, streamline=True)
    for name in ("up_blocks.0.resnets.0", "down_blocks.1.resnets.0", "mid_block.attentions.7"):
        with pytest.raises(ValueError, match="not removable units"):
            prune_unet(t.backbone, {name})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_teacher_and_streamlined_student_on_cuda_match_cpu():
    """Device-generic model code: the same teacher and pruned, streamlined student give the CPU's output on a GPU
    (TF32 off: the comparison is of placement, not of reduced-precision matmuls)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    t = _teacher()
    s = build_student(t, [1, 0, 1, 1], streamline=True)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = (t.restore_tile(z), s.restore_tile(z), s(x))
        t, s = t.to("cuda"), s.to("cuda")
        got = (t.restore_tile(z.cuda()), s.restore_tile(z.cuda()), s(x.cuda()))
    for a, b in zip(got, want, strict=True):
        assert a.device.type == "cuda" and torch.allclose(a.cpu(), b, atol=1e-4), (a.cpu() - b).abs().max()
