"""Typed config: presets, overrides, hashing, strictness, redaction, and the `config show` command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.config import SrConfig, load_config
from srcompress.infra.config import ConfigError, field_docs, redact
from srcompress.tasks.degrade.config import DEGRADE_PRESETS, DegradeConfig


def test_tiny_preset_loads_by_path_and_name():
    a = load_config("configs/tiny.yaml")
    b = load_config("tiny")
    assert a == b and a.degrade.preset == "seesr" and a.degrade.crop_size == 128
    assert a.config_hash() == b.config_hash() and len(a.config_hash()) == 64


def test_unknown_key_is_rejected_naming_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("degrade:\n  crop_sise: 64\n")
    with pytest.raises(ConfigError, match=r"degrade\.crop_sise: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"degrade\.stage1\.nois_range"):
        load_config(data={"degrade": {"stage1": {"nois_range": [1, 2]}}})


@pytest.mark.parametrize("override, key", [
    ("degrade.crop_size=-3", "degrade.crop_size"),
    ("degrade.stage1.jpeg_range=[90, 30]", "degrade.stage1"),
    ("degrade.kernel1.kernel_sizes=[8]", "degrade.kernel1"),
    ("degrade.preset=nope", "degrade"),
    ("run.max_workers=0", "run.max_workers"),
    ("degrade.crop_size=130", "degrade"),  # not a multiple of scale 4
])
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert key in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_extends_and_overrides(tmp_path):
    p = tmp_path / "child.yaml"
    p.write_text("extends: tiny\ndegrade:\n  crops_per_image: 2\n")
    cfg = load_config(p, ["run.name=child", "degrade.stage2.noise_range=[1, 5]"])
    assert cfg.degrade.crops_per_image == 2 and cfg.degrade.crop_size == 128 and cfg.run.name == "child"
    # A partial stage-2 override keeps BasicSR's other stage-2 values (not the stage-1 defaults).
    assert cfg.degrade.stage2.noise_range == (1, 5) and cfg.degrade.stage2.blur_prob == 0.8
    assert cfg.degrade.stage2.resize_range == (0.3, 1.2)


def test_presets_apply_their_parameters():
    ss = DegradeConfig(preset="stablesr")
    assert ss.stage1.noise_range == (1, 15) and ss.stage2.jpeg_range == (60, 100) and ss.kernel2.blur_sigma == (0.2, 1.0)
    assert not ss.usm.enabled and ss.final.quantize == "lq"
    se = DegradeConfig(preset="seesr")
    assert se.usm.enabled and se.usm.save_sharpened_gt and se.final.quantize == "none" and se.final.resize_back == "bicubic"
    od = DegradeConfig(preset="osediff")
    assert not od.usm.enabled and od.final.resize_back == "random"
    re = DegradeConfig(preset="realesrgan")
    assert re.crop_size == 256 and re.stage1.resize_range == (0.15, 1.5) and re.stage2.poisson_scale_range == (0.05, 2.5)
    assert set(DEGRADE_PRESETS) == {"realesrgan", "osediff", "seesr", "stablesr"}
    # fields beside the preset win
    assert DegradeConfig(preset="stablesr", crop_size=64).crop_size == 64


def test_hash_changes_with_any_field_and_is_order_independent():
    a = load_config(data={"degrade": {"seed": 1, "crop_size": 64}})
    b = load_config(data={"degrade": {"crop_size": 64, "seed": 1}})
    c = load_config(data={"degrade": {"crop_size": 64, "seed": 2}})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert a.degrade.config_hash() != c.degrade.config_hash() and a.store.config_hash() == c.store.config_hash()


def test_every_field_is_documented():
    docs = field_docs(SrConfig)
    missing = [k for k, v in docs.items() if not v]
    assert not missing, f"fields without a description: {missing}"


def test_redaction():
    out = redact({"tracking": {"uri": "https://alice:s3cr3t@mlflow.example/x"}, "api_token": "abc", "n": 1})
    assert "s3cr3t" not in str(out) and out["api_token"] == "***" and out["n"] == 1


def test_config_show_cli():
    res = CliRunner().invoke(app, ["config", "show", "--config", "configs/tiny.yaml", "--set", "degrade.seed=7"])
    assert res.exit_code == 0, res.output
    assert "seed: 7" in res.output and "# config hash:" in res.output
    res = CliRunner().invoke(app, ["config", "show", "--config", "configs/tiny.yaml", "--set", "degrade.bogus=1"])
    assert res.exit_code == 2 and "degrade.bogus: unknown key" in res.output


def test_remote_ray_with_a_local_store_is_rejected_naming_the_keys(monkeypatch):
    monkeypatch.delenv("SRCOMPRESS_STORE_URI", raising=False)
    with pytest.raises(ConfigError, match=r"run\.ray_address .* store\.uri .* run\.shared_filesystem"):
        load_config("tiny", ["run.ray_address=10.1.2.3:6379"])
    assert load_config("tiny", ["run.ray_address=10.1.2.3:6379", "run.shared_filesystem=true"])
    assert load_config("tiny", ["run.ray_address=10.1.2.3:6379", "store.uri=s3://bucket/prefix"])
    monkeypatch.setenv("SRCOMPRESS_STORE_URI", "s3://bucket/from-env")
    assert load_config("tiny", ["run.ray_address=10.1.2.3:6379"])
    # the key's old home says where it went (one cluster for every heavy step)
    with pytest.raises(ConfigError, match=r"encode\.ray_address moved to run\.ray_address"):
        load_config("tiny", ["encode.ray_address=10.1.2.3:6379"])


@pytest.mark.parametrize("preset", ["tsdsr-sd3", "osediff-sd21"])
def test_real_teacher_presets_import_a_folder_and_fail_clearly_when_it_is_missing(preset, tmp_path):
    from typer.testing import CliRunner

    from srcompress.cli import app

    cfg = load_config(preset)
    assert cfg.teacher.source != "bootstrap" and cfg.teacher.kind in ("sd3", "unet")
    assert cfg.data.held_out == [] and cfg.data.held_out_fraction > 0  # works on any dataset
    res = CliRunner().invoke(app, ["run", "--config", preset, "--workdir", str(tmp_path / "w")])
    assert res.exit_code == 2
    assert f"teacher.source: {cfg.teacher.source} is not a folder" in res.output
    assert f"data.source: {cfg.data.source} is not a folder" in res.output
    assert not (tmp_path / "w").exists()


def test_search_presets_carry_tinysr_values():
    real = load_config("tsdsr-sd3").search
    assert (real.n, real.m, real.lora_rank, real.lora_alpha, real.lr, real.weight_decay, real.ema) == \
        (2, 4, 64, 64, 5e-5, 1e-4, 0.999)
    assert real.lora_targets == ["to_k", "to_q", "to_v", "to_out.0", "proj", "linear", "linear_1", "linear_2", "net.2"]
    assert real.deepspeed.zero_stage == 2 and real.deepspeed.bf16 and real.gate_lr_mult == 10
    tiny = load_config("tiny").search
    assert (tiny.n, tiny.m) == (2, 4) and tiny.steps < 200 and tiny.lora_rank < real.lora_rank


def test_kernel_shape_ranges_must_contain_one():
    """The generalized-Gaussian / plateau shape draw splits 50/50 at 1 (BasicSR): a range without 1 is refused at
    load, naming the key, instead of crashing the first kernel draw."""
    with pytest.raises(ConfigError, match=r"degrade\.kernel2: betap_range must contain 1"):
        load_config("tiny", ["degrade.kernel2.betap_range=[1.5, 2.0]"])
    load_config("tiny", ["degrade.kernel2.betap_range=[1.0, 2.0]"])


def test_replace_drops_the_base_section_and_the_multistep_preset_loads(tmp_path):
    """``_replace: true`` replaces a section of the preset it extends instead of merging into it: the
    multi-step preset drops the SD3-style teacher's recipe (patch, heads, …) and keeps none of its keys."""
    base = load_config("tiny")
    ms = load_config("tiny-multistep")
    assert base.teacher.bootstrap.patch_size == 2 and "patch_size" not in ms.teacher.bootstrap.model_fields_set
    assert ms.teacher.bootstrap.multistep is not None and ms.teacher.bootstrap.multistep.lq_residual
    assert ms.degrade == base.degrade and not ms.vae.enabled
    p = tmp_path / "merge.yaml"
    p.write_text("extends: tiny\nteacher:\n  bootstrap:\n    multistep: {steps: 4}\n")
    with pytest.raises(ConfigError, match="patch_size"):  # merged: the SD3 keys stay and are refused
        load_config(p)


@pytest.mark.parametrize("overrides, match", [
    (["adaptive.enabled=true"], "needs a multi-step teacher"),
    (["encode.teacher_steps=adaptive"], "needs adaptive.enabled"),
])
def test_adaptive_settings_need_a_multistep_teacher(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", overrides)
    assert load_config("tiny-multistep", ["adaptive.enabled=true", "encode.teacher_steps=adaptive"]).adaptive.enabled


@pytest.mark.parametrize("override, match", [
    ("adaptive.intervals=[20, 15, 10, 5]", "increasing"),
    ("adaptive.region_overlap=16", "region_overlap must be smaller"),
    ("adaptive.fr_weights={ahiq: 1.0}", "unknown metrics"),
    ("adaptive.nr_weights={musiq: 1.0}", "unknown metrics"),
    ("teacher.bootstrap.multistep.prediction_type=epsilon", "lq_residual needs prediction_type"),
    ("teacher.bootstrap.multistep.norm_groups=12", "must divide"),
])
def test_adaptive_and_multistep_values_are_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny-multistep", [override])


def test_the_unet_preset_trains_a_one_step_unet_teacher():
    u = load_config("tiny-unet")
    rec = u.teacher.bootstrap.unet
    assert rec is not None and rec.timestep == 999 and u.teacher.bootstrap.multistep is None
    assert "patch_size" not in u.teacher.bootstrap.model_fields_set and not u.vae.enabled
    assert (u.search.n, u.search.m) == (3, 7) and not u.distill.streamline
    with pytest.raises(ConfigError, match="must divide"):
        load_config("tiny-unet", ["teacher.bootstrap.unet.norm_groups=12"])
    with pytest.raises(ConfigError, match="multistep or unet"):
        load_config("tiny-unet", ["teacher.bootstrap.multistep={steps: 4}"])
