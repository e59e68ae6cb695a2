"""The image-only (TinySR) student: pinned to diffusers' own SD3 run with an empty prompt, the text stream really
gone, the published folder holding exactly the runtime parameters, and the config rules around it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from srcompress.config import load_config
from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.student.student import build_student, load_student, save_student
from srcompress.models.student.tinysr import TinySRTransformer
from tests.models.test_student import _teacher


def _velocity_of_sd3(transformer, z, prompt, pooled, t=1000.0):
    b = z.shape[0]
    return transformer(hidden_states=z, encoder_hidden_states=prompt.expand(b, -1, -1),
                       pooled_projections=pooled.expand(b, -1), timestep=torch.full((b,), t)).sample


def test_image_only_equals_diffusers_sd3_with_an_empty_prompt():
    """The reference is diffusers' ``SD3Transformer2DModel`` itself: with zero prompt tokens its joint attention
    is self-attention over the image tokens and its context stream carries nothing — what TinySR's student
    computes. With the real prompt the output differs: the text stream is really gone."""
    t = _teacher()
    tr, prompt, pooled = t.backbone, t.prompt_embeds, t.pooled_prompt_embeds
    model = TinySRTransformer.from_sd3(tr, prompt, pooled, t.timestep)
    z = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        empty = _velocity_of_sd3(tr, z, prompt[:, :0], pooled, t.timestep)
        full = _velocity_of_sd3(tr, z, prompt, pooled, t.timestep)
        ours = model(z)
    assert torch.allclose(ours, empty, atol=1e-5), (ours - empty).abs().max()
    assert (ours - full).abs().max() > 1e-2
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "add_" in n or "context" in n or "time_text" in n], names


def test_image_only_student_keeps_the_masked_teachers_image_stream():
    """Kept blocks are the teacher's (in order, search LoRA merged first): the student equals the masked
    teacher run with an empty prompt; masking by another mask gives another function."""
    t = _teacher()
    z = torch.randn(2, 8, 8, 8)
    mask = [1, 0, 0, 1]
    s = build_student(t, mask, image_only=True)
    assert s.image_only and s.streamlined and s.prompt_embeds is None
    empty_prompt = t.prompt_embeds[:, :0]
    t.prompt_embeds = empty_prompt  # the teacher's own forward, as a reference, without its text tokens
    with torch.no_grad(), DepthMasker(t).masked(torch.tensor(mask, dtype=torch.float32)):
        ref = t.restore_tile(z)
    assert torch.allclose(s.restore_tile(z), ref, atol=1e-5)
    other = build_student(_teacher(), [1, 1, 0, 0], image_only=True)
    assert not torch.allclose(other.restore_tile(z), ref, atol=1e-3)


def test_image_only_is_much_smaller_than_the_context_keeping_student():
    t = _teacher()
    keep_ctx = build_student(t, [1, 0, 1, 0], streamline=True)
    image = build_student(t, [1, 0, 1, 0], image_only=True)
    count = lambda m: sum(p.numel() for p in m.backbone.parameters())  # noqa: E731
    dim = t.backbone.inner_dim
    # per kept block: q, k, v, out (4·(d²+d)) + feed-forward (8d² + 5d) + the cached 6d modulation
    per_block = 4 * (dim * dim + dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim) + 6 * dim
    patch = t.backbone.config.patch_size
    c = t.backbone.config.in_channels
    rest = (c * patch * patch * dim + dim) + (dim * patch * patch * c + patch * patch * c) + 2 * dim
    assert count(image) == 2 * per_block + rest
    assert count(image) < 0.7 * count(keep_ctx)


def test_published_image_only_student_is_exactly_its_runtime_parameters(tmp_path):
    t = _teacher()
    s = build_student(t, [0, 1, 1, 0], image_only=True)
    folder = save_student(s, tmp_path / "st")
    files = list((folder / "transformer").glob("*.safetensors"))
    assert files and not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    stored = sum(v.numel() for f in files for v in load_file(str(f)).values())
    assert stored == sum(p.numel() for p in s.backbone.parameters())
    assert not (folder / "prompt_embeds.safetensors").exists()  # an image-only student reads no prompt
    back = load_student(folder)
    assert back.image_only and back.kept == ["transformer_blocks.1", "transformer_blocks.2"]
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(back(x), s(x), atol=1e-6)
    direct = TinySRTransformer.from_pretrained(folder, subfolder="transformer", local_files_only=True,
                                               use_safetensors=True)
    z = torch.randn(1, 8, 8, 8)
    assert torch.equal(direct(z), s.backbone(z))
    with pytest.raises(ValueError, match="no un-streamlined form"):
        load_student(folder, streamline=False)


def test_dual_attention_teacher_is_refused_with_the_reason():
    t = _teacher()
    t.backbone.register_to_config(dual_attention_layers=(0,))
    with pytest.raises(ValueError, match="dual-attention"):
        build_student(t, [1, 0, 1, 0], image_only=True)


def test_text_stream_knob():
    """``distill.text_stream``: auto drops the stream for streamlined SD3 students only; drop needs streamline."""
    cfg = load_config("tiny").distill
    assert cfg.text_stream == "auto" and cfg.image_only("sd3") and not cfg.image_only("unet")
    assert not load_config("tiny", ["distill.text_stream=keep"]).distill.image_only("sd3")
    assert not load_config("tiny", ["distill.streamline=false"]).distill.image_only("sd3")
    assert load_config("tiny", ["distill.text_stream=drop"]).distill.image_only("sd3")
    with pytest.raises(ValueError, match="needs streamline: true"):
        load_config("tiny", ["distill.text_stream=drop", "distill.streamline=false"])
    with pytest.raises(ValueError, match="a UNet has none"):
        build_student(_unet_teacher(), [1] * 7, image_only=True)


def _unet_teacher():
    from srcompress.models.teachers.tiny import tiny_unet_teacher

    return tiny_unet_teacher(seed=0)
