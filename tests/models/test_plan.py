"""``srcompress plan``: params and MACs counted on the meta device equal those of the real models; the CLI prints
them for TSD-SR's SD3-medium in seconds, as a table or JSON."""

from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.models.student import plan as planning
from srcompress.models.student.student import build_student
from srcompress.models.student.tiny_vae import SeparableAutoencoderTiny, tiny_vae_config
from srcompress.models.teachers.tiny import tiny_sd3_teacher

SIZE, TOKENS, TINY = 32, 8, {"width": 16, "blocks": 1}


def _real_macs(model, size: int) -> int:
    """The whole forward (encode → one step → decode) of a real model, counted as models/efficiency.py does,
    with attention on the math SDPA backend (the CPU's fused kernel has no FlopCounterMode formula)."""
    return planning.macs(lambda: model(torch.rand(1, 3, size, size)))


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_meta_counts_equal_the_real_models():
    teacher = tiny_sd3_teacher(num_layers=4, prompt_len=TOKENS)  # AutoencoderKL factor 4 + a 4-block MMDiT
    mask = [1, 0, 1, 0]  # the last block pruned: the student's new last block is rebuilt context-pre-only
    report = planning.plan(dict(teacher.backbone.config), dict(teacher.vae.config), mask=mask, size=SIZE,
                           text_tokens=TOKENS, tiny_vae=TINY)

    student = build_student(teacher, mask, image_only=True)  # plan's default student: TinySR's image-only
    student.vae = SeparableAutoencoderTiny(**tiny_vae_config(16, teacher.latent_factor, **TINY))
    assert report["teacher"]["params"] == _n(teacher.vae) + _n(teacher.backbone)
    assert report["teacher_transformer"]["params"] == _n(teacher.backbone)
    assert report["student"]["params"] == _n(student.vae) + _n(student.backbone)
    assert report["student_backbone"]["params"] == _n(student.backbone)
    assert report["student_vae"]["params"] == _n(student.vae)
    assert all(isinstance(report[k]["params"], int) for k in ("teacher", "student"))

    assert report["teacher"]["macs"] == _real_macs(teacher, SIZE)
    assert report["student"]["macs"] == _real_macs(student, SIZE)
    assert report["teacher_vae"]["macs"] + report["teacher_transformer"]["macs"] == report["teacher"]["macs"]
    assert 0 < report["student"]["gmacs"] < report["teacher"]["gmacs"]
    assert 0 < report["student"]["params"] < report["teacher"]["params"]
    assert report["kept"] == [0, 2] and report["latent"] == [16, SIZE // 4, SIZE // 4]
    # without the attention matmuls (TinySR's counter): each kept image-only block attends over L image tokens,
    # Q·Kᵀ and softmax·V are L²·d MACs each
    tokens = (SIZE // 4 // teacher.backbone.config.patch_size) ** 2
    attention = 2 * 2 * tokens**2 * teacher.backbone.inner_dim
    assert report["student"]["macs"] - round(report["student"]["gmacs_no_attention"] * 1e9) == attention
    keep_ctx = planning.plan(dict(teacher.backbone.config), dict(teacher.vae.config), mask=mask, size=SIZE,
                             text_tokens=TOKENS, tiny_vae=TINY, image_only=False)
    ctx_student = build_student(teacher, mask, streamline=True)
    assert keep_ctx["student_backbone"]["params"] == _n(ctx_student.backbone) > _n(student.backbone)
    assert keep_ctx["student_backbone"]["macs"] == planning.macs(lambda: ctx_student.restore_tile(
        torch.zeros(1, 16, SIZE // 4, SIZE // 4)))


def test_text_tokens_enter_the_macs_and_the_teacher_vae_can_stay():
    cfg = dict(tiny_sd3_teacher(num_layers=4).backbone.config)
    vae = dict(tiny_sd3_teacher(num_layers=4).vae.config)
    few = planning.plan(cfg, vae, keep=[0, 1], size=SIZE, text_tokens=4, tiny_vae=None, image_only=False)
    many = planning.plan(cfg, vae, keep=[0, 1], size=SIZE, text_tokens=64, tiny_vae=None, image_only=False)
    assert many["teacher_transformer"]["macs"] > few["teacher_transformer"]["macs"]
    assert many["student_backbone"]["macs"] > few["student_backbone"]["macs"]  # the kept text stream costs
    image = [planning.plan(cfg, vae, keep=[0, 1], size=SIZE, text_tokens=n, tiny_vae=None) for n in (4, 64)]
    assert image[0]["student_backbone"]["macs"] == image[1]["student_backbone"]["macs"]  # no text stream
    assert few["student_vae"]["tiny"] is False and few["student_vae"]["params"] == few["teacher_vae"]["params"]


def test_block_choices():
    assert planning.nm_keep(24, 2, 4) == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21]
    assert planning.spread_keep(24, 12) == [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]
    assert planning.spread_keep(24, 24) == list(range(24)) and planning.spread_keep(24, 1) == [0]
    assert planning.parse_mask(b'{"mask": [1, 0, 1, 0]}', 4) == [1, 0, 1, 0]
    assert planning.parse_mask("[0, 1]", 2) == [0, 1]
    for bad, msg in (("[1, 0]", "3 blocks"), ('{"kept": []}', "'mask'"), ("[1, 2, 0]", "0/1"), ("[0,0,0]", "no block"),
                     ("nope", "not JSON")):
        with pytest.raises(ValueError, match=msg):
            planning.parse_mask(bad, 3)
    with pytest.raises(ValueError, match="between 1 and 24"):
        planning.spread_keep(24, 25)
    with pytest.raises(ValueError, match="m dividing"):
        planning.nm_keep(24, 2, 5)


def test_cli_plans_sd3_medium_in_seconds_as_json_and_table(tmp_path):
    runner = CliRunner()
    t0 = time.perf_counter()
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--json"])
    elapsed = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert elapsed < 30, elapsed  # meta device: no weights, no init (a few seconds once diffusers is imported)
    for key in ("teacher", "student", "teacher_vae", "teacher_transformer", "student_backbone", "student_vae"):
        assert isinstance(r[key]["params"], int) and r[key]["gmacs"] > 0, key
    assert r["teacher_transformer"]["params"] == 2_028_328_000  # SD3-medium's published count
    assert r["teacher_vae"]["params"] == 83_819_683
    assert r["kept"] == planning.nm_keep(24, 2, 4) and r["text_tokens"] == 333
    assert r["student"]["gmacs"] < r["teacher"]["gmacs"] and r["student"]["params"] < r["teacher"]["params"]
    # the preset's student beats TinySR's final row (Table 1: 341M params, 427 GMACs), attention matmuls counted
    assert r["student"]["params"] <= 341_000_000 and r["student"]["gmacs"] <= 427.0, r["student"]
    assert r["student_backbone"]["image_only"] and r["student_vae"]["tiny"]
    assert r["tinysr_reported"]["params"] == 341_000_000

    result = tmp_path / "result.json"
    result.write_text(json.dumps({"format": "srcompress.mask.v1", "mask": [1, 0] * 12}))
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--mask", str(result)])
    assert res.exit_code == 0, res.output
    assert "12 of 24" in res.stdout and "0 2 4 6 8 10 12 14 16 18 20 22" in res.stdout
    assert "TinySR" in res.stdout and "341.0M" in res.stdout and "516" not in res.stdout


def test_cli_plans_the_compressed_teacher_vae_when_the_config_enables_it():
    """vae.enabled: the student's VAE is the SD3 VAE pruned to 64 channels, no attention, separable encoder —
    TinySR's Table 3 reports 1,781.91 → 78.48 GMACs for its VAE; ours counts encoder + decoder at 512 px."""
    res = CliRunner().invoke(app, ["plan", "--config", "tsdsr-sd3", "--json", "--set", "distill.tiny_vae.enabled=false",
                                   "--set", "vae.enabled=true"])
    assert res.exit_code == 0, res.output
    sv = json.loads(res.stdout)["student_vae"]
    assert sv["compressed"] and not sv["tiny"]
    assert sv["config"] == {"widths": [64, 64, 64, 64], "attention": False, "separable_encoder": True}
    assert sv["gmacs"] < 1_816.3 / 15 and sv["encode_gmacs"] < sv["decode_gmacs"] / 10, sv  # SepConv encoder


def test_cli_rejects_unet_configs_and_conflicting_choices():
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--config", "osediff-sd21"])
    assert res.exit_code == 2 and "UNet" in res.output
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--keep", "8", "--mask", "[1]"])
    assert res.exit_code == 2 and "one of --keep, --mask, --budget" in res.output
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--budget", "watts=3"])
    assert res.exit_code == 2 and "gmacs=N or params=N" in res.output


@pytest.mark.slow
def test_cli_budget_chooses_the_student_that_meets_it():
    """--budget: the student plan then counts exactly (not the cost model) is within 5% below the budget."""
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--json", "--budget", "gmacs=420"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    b = r["budget"]
    assert (b["n"], b["m"], b["vae_width"]) == (2, 4, 64) and len(r["kept"]) == 12
    assert 0.95 * 420 <= r["student"]["gmacs"] <= 420 and r["student"]["gmacs"] == pytest.approx(b["gmacs"])
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--json", "--budget", "params=200e6"])
    r = json.loads(res.output)
    assert 0.95 * 200e6 <= r["student"]["params"] <= 200e6 and r["budget"]["metric"] == "params", r["budget"]
    assert r["student_vae"]["config"]["width"] == r["budget"]["vae_width"]  # the chosen width is what plan built
    # the config's own search.budget (what the search step chooses): plan builds that student without --budget
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--json", "--set",
                              "search.budget={metric: params, value: 200e6, vae_widths: [16, 32, 48, 64]}"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["budget"] == r["budget"]
    res = runner.invoke(app, ["plan", "--config", "tsdsr-sd3", "--mask", "[1, 0]"])
    assert res.exit_code == 2 and "24 blocks" in res.output
