"""Teacher interface on tiny SD3 and UNet teachers: formulas, blocks, hooks, loader round-trip and errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from srcompress.models.teachers import TeacherLoadError, load_teacher, save_teacher
from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_teacher(seed=0, num_layers=3).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet_teacher(seed=0).eval()


def _lq(b=2, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_sd3_one_step_formula_and_shapes(sd3):
    x = _lq()
    z = sd3.encode(x)
    assert z.shape == (2, 16, 8, 8) and sd3.latent_factor == 4
    v = sd3.backbone(hidden_states=z, encoder_hidden_states=sd3.prompt_embeds.expand(2, -1, -1),
                     pooled_projections=sd3.pooled_prompt_embeds.expand(2, -1),
                     timestep=torch.tensor([1000.0, 1000.0])).sample
    assert torch.allclose(sd3.restore_latent(z), z - v, atol=1e-6)  # z0 = z_L − σ v with σ(1000) = 1
    sr = sd3(x)
    assert sr.shape == x.shape and sr.min() >= 0 and sr.max() <= 1
    # encode follows the recorded convention: z = (mean − shift) · scale
    mean = sd3.vae.encode(x * 2 - 1).latent_dist.mean
    assert torch.allclose(z, (mean - sd3.convention.shift_factor) * sd3.convention.scaling_factor)


@torch.no_grad()
def test_unet_one_step_formula_matches_scheduler(unet):
    x = _lq()
    z = unet.encode(x)
    eps = unet.backbone(z, torch.tensor([999, 999]), encoder_hidden_states=unet.prompt_embeds.expand(2, -1, -1)).sample
    ab = unet.scheduler.alphas_cumprod[999]
    hand = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
    assert torch.allclose(unet.restore_latent(z), hand, atol=1e-5)
    from diffusers import DDPMScheduler

    fresh = DDPMScheduler.from_config(unet.scheduler.config)  # diffusers' own x0 estimate at t = 999
    step = fresh.step(eps, 999, z).pred_original_sample
    assert torch.allclose(unet.restore_latent(z), step, atol=1e-5)
    assert unet(x).shape == x.shape


def test_block_enumeration_and_hooks(sd3, unet):
    names = [n for n, _ in sd3.prunable_blocks()]
    assert names == ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]
    z = sd3.encode(_lq())
    with torch.no_grad(), sd3.capture(["transformer_blocks.0", "transformer_blocks.2"]) as feats:
        sd3.restore_latent(z)
    assert set(feats) == {"transformer_blocks.0", "transformer_blocks.2"}
    tokens = (8 // 2) ** 2
    for f in feats.values():
        assert f["input"].shape == f["output"].shape == (2, tokens, 64)
    # the block's output is the next block's input
    with torch.no_grad(), sd3.capture() as allf:
        sd3.restore_latent(z)
    assert torch.equal(allf["transformer_blocks.0"]["output"], allf["transformer_blocks.1"]["input"])
    unames = [n for n, _ in unet.prunable_blocks()]
    # units a mask can make the identity: not the widening down_blocks.1.resnets.0, no up-block resnet (skips)
    assert unames == ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "mid_block.resnets.0",
                      "mid_block.attentions.0", "mid_block.resnets.1", "up_blocks.1.attentions.0",
                      "up_blocks.1.attentions.1"]
    masker = DepthMasker(unet)
    z = unet.encode(_lq())
    with torch.no_grad():
        base = unet.restore_latent(z)
        for i, name in enumerate(unames):  # masking any listed unit changes the output (it really is skipped)
            with masker.masked(masker.skipping(i)):
                assert not torch.allclose(unet.restore_latent(z), base, atol=1e-6), name
    with torch.no_grad(), unet.capture(["mid_block.resnets.0", "up_blocks.1.attentions.1"]) as uf:
        unet.restore_latent(unet.encode(_lq()))
    assert uf["mid_block.resnets.0"]["output"].dim() == 4 and uf["up_blocks.1.attentions.1"]["output"].dim() == 4
    with pytest.raises(KeyError):
        sd3.block("transformer_blocks.99")


def test_sample_mode_needs_and_honours_a_seed():
    t = tiny_sd3_teacher(seed=0, num_layers=1, latent_mode="sample").eval()
    x = _lq()
    with torch.no_grad():
        with pytest.raises(ValueError, match="generator"):
            t.encode(x)
        a = t.encode(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
        b = t.encode(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
        c = t.encode(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(3)])
    assert torch.equal(a, b) and torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("which", ["sd3", "unet"])
def test_loader_round_trip(tmp_path, which, sd3, unet):
    teacher = sd3 if which == "sd3" else unet
    folder = save_teacher(teacher, tmp_path / which)
    back = load_teacher(folder)
    assert back.kind == teacher.kind and back.convention == teacher.convention
    assert not any(p.requires_grad for p in back.parameters())
    x = _lq()
    with torch.no_grad():
        assert torch.allclose(back(x), teacher(x), atol=1e-5)
    assert [n for n, _ in back.prunable_blocks()] == [n for n, _ in teacher.prunable_blocks()]


def test_loader_errors_name_the_file(tmp_path, sd3):
    with pytest.raises(TeacherLoadError, match="folder not found"):
        load_teacher(tmp_path / "nope")
    good = save_teacher(sd3, tmp_path / "good")

    def variant(name):
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    d = variant("no_vae_weights")
    (d / "vae" / "diffusion_pytorch_model.safetensors").rename(d / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(TeacherLoadError, match=r"vae weights.*pickled weights are not loaded"):
        load_teacher(d)
    d = variant("no_prompts")
    (d / "prompt_embeds.safetensors").unlink()
    with pytest.raises(TeacherLoadError, match="prompt_embeds.safetensors"):
        load_teacher(d)
    d = variant("no_pooled")
    save_file({"prompt_embeds": load_file(str(good / "prompt_embeds.safetensors"))["prompt_embeds"]},
              str(d / "prompt_embeds.safetensors"))
    with pytest.raises(TeacherLoadError, match="pooled_prompt_embeds"):
        load_teacher(d)
    d = variant("bad_dims")
    save_file({"prompt_embeds": torch.zeros(1, 4, 7), "pooled_prompt_embeds": torch.zeros(1, 32)},
              str(d / "prompt_embeds.safetensors"))
    with pytest.raises(ValueError, match="joint_attention_dim"):
        load_teacher(d)
    d = variant("no_backbone")
    shutil.rmtree(d / "transformer")
    with pytest.raises(TeacherLoadError, match="missing transformer config"):
        load_teacher(d)


def test_lora_is_merged(tmp_path, sd3):
    from peft import LoraConfig, get_peft_model

    folder = save_teacher(sd3, tmp_path / "t")
    base = load_teacher(folder)
    # A LoRA with non-zero B, on TSD-SR's target modules (docs/methods.md §10).
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    z = base.encode(_lq())
    with torch.no_grad():
        before = base.restore_latent(z)
    peft_model = get_peft_model(base.backbone, cfg)
    with torch.no_grad():
        ref = base.restore_latent(z)  # base.backbone is now the LoRA-wrapped module
    assert not torch.allclose(ref, before, atol=1e-4)  # the LoRA changes the output
    peft_model.save_pretrained(str(folder / "lora"))
    merged = load_teacher(folder)
    assert not any("lora" in n for n, _ in merged.backbone.named_modules())
    with torch.no_grad():
        assert torch.allclose(merged.restore_latent(z), ref, atol=1e-5)
        default = load_teacher(folder, lora=None).restore_latent(z)  # None: the folder's own lora/
        plain = load_teacher(folder, lora="none").restore_latent(z)  # "none": switched off
    assert torch.allclose(default, ref, atol=1e-5)
    assert torch.allclose(plain, before, atol=1e-6) and not torch.allclose(plain, ref, atol=1e-4)
    bad = tmp_path / "badlora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((folder / "lora" / "adapter_config.json").read_text())
    with pytest.raises(TeacherLoadError, match="adapter_model.safetensors"):
        load_teacher(folder, lora=bad)
