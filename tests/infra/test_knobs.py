"""Every advertised config knob does something, and a test would notice if it stopped.

The keys are derived from the typed config (``SrConfig`` and the component models under it, as
``srcompress config show --docs`` lists them), never hand-listed. ``untested_keys`` lists the keys whose
name appears in no test file; ``test_every_config_key_is_named_in_a_test`` fails when a new key is added
without one (only the short ``INDIRECT`` allow-list below may stay unnamed, each with its reason).

    python -m tests.infra.test_knobs              # untested keys, counting every test file
    python -m tests.infra.test_knobs --not-self   # …ignoring this file (what the suite covered before it)

The rest of the file tests the knobs that no other test exercised, each through the function that reads it
(seconds, no pipeline run): every test changes the knob and asserts what the code then does differently.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srcompress.config import SrConfig, load_config
from srcompress.infra.config import ConfigError, field_docs
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest
from srcompress.infra.store import LocalStore, StoreConfig
from srcompress.infra.tracking import TrackingConfig

TESTS = Path(__file__).resolve().parents[1]

# --- knobs-allow-begin (this block is not scanned: naming a key here does not count as testing it) ---
# Keys that may stay unnamed in tests, each exercised only indirectly. Keep it short; every entry needs a reason.
INDIRECT: dict[str, str] = {}
# --- knobs-allow-end ---


def config_keys() -> list[str]:
    """Every dotted key of the root config, sections included (``config show --docs`` lists the same)."""
    return list(field_docs(SrConfig))


def _test_sources(exclude: tuple[Path, ...] = ()) -> str:
    texts = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.resolve() in exclude:
            continue
        text = path.read_text()
        if path.resolve() == Path(__file__).resolve():
            text = re.sub(r"# --- knobs-allow-begin.*?# --- knobs-allow-end ---", "", text, flags=re.S)
        texts.append(text)
    return "\n".join(texts)


def untested_keys(exclude: tuple[Path, ...] = ()) -> list[str]:
    """Keys whose own name (the last part of the dotted key, as a word) appears in no test file."""
    text = _test_sources(exclude)
    return [k for k in config_keys() if not re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", text)]


def test_every_config_key_is_named_in_a_test():
    keys = set(config_keys())
    assert len(keys) > 200 and "degrade.kernel2.betag_range" in keys and "registry.gate.metrics" in keys
    assert set(INDIRECT) <= keys, f"allow-list names keys the config no longer has: {sorted(set(INDIRECT) - keys)}"
    untested = set(untested_keys())
    new = sorted(untested - set(INDIRECT))
    assert not new, (f"config keys that no test names (add a test that shows each one's effect, or remove the "
                     f"key): {new}")
    stale = sorted(set(INDIRECT) - untested)
    assert not stale, f"allow-listed keys that tests now name (drop them from INDIRECT): {stale}"


def test_the_scan_sees_a_missing_key(tmp_path, monkeypatch):
    """The guard itself: a key whose name no test mentions is reported."""
    from pydantic import Field, create_model

    from srcompress.tasks.search.config import SearchConfig

    name = "_".join(["zz", "knob", "nobody", "names"])  # built, so this file does not name it either
    extended = create_model("Extended", __base__=SearchConfig, **{name: (int, Field(0, description="new"))})
    monkeypatch.setattr(SrConfig.model_fields["search"], "annotation", extended)
    assert f"search.{name}" in config_keys() and f"search.{name}" in untested_keys()


# ---------------------------------------------------------------------------------------------------------
# helpers


def _cfg(*overrides: str) -> SrConfig:
    return load_config(None, list(overrides))


def _ctx(tmp_path: Path, **kw) -> RunContext:
    return RunContext(workdir=str(tmp_path), store=StoreConfig(uri=str(tmp_path / "store")),
                      tracking=TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), **kw)


def _manifest(kind: str = "x", step: str = "x", uri: str = "file:///x", digest: str = "d" * 64, **kw) -> Manifest:
    return Manifest(kind=kind, step=step, uri=uri, digest=digest, config_hash="c" * 64, code_version="v",
                    cache_key="k" * 64, **kw)


class _Log:
    """A stand-in for Prefect's run logger outside a flow run: records warnings."""

    def __init__(self):
        self.warnings: list[str] = []

    def info(self, *a, **k):
        pass

    debug = info

    def warning(self, msg, *args, **k):
        self.warnings.append(msg % args if args else msg)


class _Tracker:
    """An MLflow tracker stand-in (the steps' MLflow records are tested elsewhere): every call is accepted."""

    uri = "fake://tracking"

    @contextlib.contextmanager
    def step_run(self, *a, **k):
        yield "run-1"

    def __getattr__(self, name):  # log_metrics, log_text, log_manifest, set_tags, log_artifact, …
        return lambda *a, **k: None


def _tiny_teacher(seed: int = 0, layers: int = 2, channels: int = 4):
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    t = tiny_sd3_teacher(seed=seed, num_layers=layers, latent_channels=channels, head_dim=4, heads=2, patch_size=2,
                         vae_channels=(8,), vae_norm_groups=1, vae_identity=True, tile=8)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random weights everywhere (diffusers zero-inits adaLN and proj_out)
        for p in t.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return t.eval()


# ---------------------------------------------------------------------------------------------------------
# degrade.*: the Real-ESRGAN draws (models/degradations), through the config that load_config builds


def _draws(deg, seeds=range(12)):
    from srcompress.models.degradations.pipeline import draw_params

    return [draw_params(np.random.default_rng(s), deg) for s in seeds]


GEN_ONLY = ["kernel_list=[generalized_iso]", "kernel_prob=[1.0]", "sinc_prob=0", "kernel_sizes=[7]"]
PLATEAU_ONLY = ["kernel_list=[plateau_iso]", "kernel_prob=[1.0]", "sinc_prob=0", "kernel_sizes=[7]"]


def _kernels(which: str, family: list[str], *extra: str):
    deg = _cfg(*[f"degrade.kernel1.{o}" for o in family], *[f"degrade.kernel2.{o}" for o in family], *extra).degrade
    return [getattr(p, which) for p in _draws(deg)]


def _same(a: list, b: list) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("which", ["kernel1", "kernel2"])
def test_betag_and_betap_ranges_shape_their_own_kernel_family(which):
    other = "kernel2" if which == "kernel1" else "kernel1"
    wide_g, wide_p = f"degrade.{which}.betag_range=[0.5, 4.0]", f"degrade.{which}.betap_range=[0.6, 3.0]"
    base = _kernels(which, GEN_ONLY)
    flat = _kernels(which, GEN_ONLY, wide_g)
    peaky = _kernels(which, GEN_ONLY, f"degrade.{which}.betag_range=[0.9, 1.1]")
    assert all(not np.allclose(a, b) for a, b in zip(flat, peaky))
    # the other kernel and the other family's range leave these draws alone
    assert _same(_kernels(other, GEN_ONLY), _kernels(other, GEN_ONLY, wide_g))
    assert _same(base, _kernels(which, GEN_ONLY, wide_p))
    p_base = _kernels(which, PLATEAU_ONLY)
    assert all(not np.allclose(a, b) for a, b in zip(p_base, _kernels(which, PLATEAU_ONLY, wide_p)))
    assert _same(p_base, _kernels(which, PLATEAU_ONLY, wide_g))


def test_pad_to_sets_each_kernel_size_and_the_final_sinc_follows_kernel1():
    deg = _cfg("degrade.kernel1.pad_to=23", "degrade.kernel2.pad_to=25", "degrade.final.final_sinc_prob=1").degrade
    for p in _draws(deg, range(4)):
        assert p.kernel1.shape == (23, 23) and p.kernel2.shape == (25, 25) and p.sinc.shape == (23, 23)
        assert p.kernel1.sum() == pytest.approx(1, abs=1e-5) and p.kernel2.sum() == pytest.approx(1, abs=1e-5)


def _support(k: np.ndarray) -> int:
    rows = np.nonzero(np.abs(k).max(1) > 0)[0]
    return int(rows[-1] - rows[0] + 1)


def test_final_sinc_kernel_sizes_bound_the_sinc_support():
    small = _draws(_cfg("degrade.final.final_sinc_prob=1", "degrade.final.sinc_kernel_sizes=[5]").degrade)
    large = _draws(_cfg("degrade.final.final_sinc_prob=1", "degrade.final.sinc_kernel_sizes=[19]").degrade)
    assert {_support(p.sinc) for p in small} == {5} and {_support(p.sinc) for p in large} == {19}


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_resize_noise_and_gray_probabilities(stage):
    def draws(*o):
        return _draws(_cfg(*[f"degrade.stage{stage}.{x}" for x in o]).degrade, range(20))

    r, n = f"resize{stage}", f"noise{stage}"
    up = draws("resize_prob=[1, 0, 0]", "gaussian_noise_prob=1", "gray_noise_prob=1")
    down = draws("resize_prob=[0, 1, 0]", "gaussian_noise_prob=0", "gray_noise_prob=0")
    keep = draws("resize_prob=[0, 0, 1]")
    assert {getattr(p, r).kind for p in up} == {"up"} and {getattr(p, r).kind for p in down} == {"down"}
    assert {getattr(p, r).kind for p in keep} == {"keep"} and {getattr(p, r).scale for p in keep} == {1.0}
    assert all(getattr(p, n).gaussian and getattr(p, n).gray for p in up)
    assert not any(getattr(p, n).gaussian or getattr(p, n).gray for p in down)
    other = 2 if stage == 1 else 1  # the other stage keeps its mixed draws
    assert len({getattr(p, f"resize{other}").kind for p in up}) > 1


def test_final_order_prob_picks_the_order_of_the_last_step():
    assert all(p.order_a for p in _draws(_cfg("degrade.final.order_prob=1").degrade))
    assert not any(p.order_a for p in _draws(_cfg("degrade.final.order_prob=0").degrade))


def test_usm_radius_and_threshold_shape_the_sharpened_gt():
    from srcompress.models.degradations import ops
    from srcompress.models.degradations.pipeline import degrade_batch

    g = torch.Generator().manual_seed(0)
    hq = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 40, 40, generator=g), 3, 1, 1)[..., 4:36, 4:36].contiguous()
    keep = ["degrade.usm.enabled=true", "degrade.usm.save_sharpened_gt=true", "degrade.crop_size=32"]

    def gt(*o):
        return degrade_batch(hq, [1], _cfg(*keep, *o).degrade)[1]

    r5 = gt("degrade.usm.radius=5", "degrade.usm.threshold=0")
    r51 = gt("degrade.usm.radius=51", "degrade.usm.threshold=0")
    assert torch.allclose(r5, ops.usm_sharp(hq, 5, 0.5, 0.0)) and not torch.allclose(r5, r51, atol=1e-4)
    assert not torch.allclose(r5, hq, atol=1e-3)
    assert torch.equal(gt("degrade.usm.threshold=255"), hq)  # no residual passes the mask: nothing sharpened


def test_use_hflip_mirrors_some_crops_only_when_on():
    from srcompress.tasks.degrade.shards import PairItem, SourceRecord, _crop

    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    src = SourceRecord(name="a.png", origin="file", location="/a.png", digest="e" * 64, width=48, height=40)

    def crops(on: bool):
        cfg = _cfg(f"degrade.use_hflip={str(on).lower()}", "degrade.crop_size=16").degrade
        return [_crop(rgb, PairItem(source=src, crop_index=i), cfg) for i in range(16)]

    on, off = crops(True), crops(False)
    assert not any(info["hflip"] for _, info in off)
    assert 0 < sum(info["hflip"] for _, info in on) < 16
    for (t, info), (t_off, info_off) in zip(on, off):
        assert info["box"] == info_off["box"]  # same crop, mirrored or not
        assert torch.equal(t, t_off.flip(-1) if info["hflip"] else t_off)


# ---------------------------------------------------------------------------------------------------------
# data.* and evaluate.data.*: how many images are used; what is kept of a quarantined file


def test_data_max_images_caps_the_training_sources():
    from srcompress.tasks.common.sources import list_sources

    base = _cfg("data.bundled_sets=[sklearn, kodak]")
    everything = list_sources(base.data, base.store)
    capped = _cfg("data.bundled_sets=[sklearn, kodak]", "data.max_images=2")
    refs = list_sources(capped.data, capped.store)
    assert len(everything) > 2 and [r.name for r in refs] == [r.name for r in everything[:2]]


def _png(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_evaluate_data_max_images_caps_every_kind_of_dataset(tmp_path):
    from srcompress.tasks.evaluate.datasets import load_items

    for i in range(3):
        _png(tmp_path / "hr_only" / f"{i}.png", 64, i)
        _png(tmp_path / "paired" / "hr" / f"{i}.png", 64, i)
        _png(tmp_path / "paired" / "lr" / f"{i}.png", 16, 10 + i)
        _png(tmp_path / "lr_only" / f"{i}.png", 16, 20 + i)
    shards = [(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
               [{"name": f"s{j}", "crop_index": 0} for j in range(2)]) for _ in range(2)]
    for kind, folder in (("hr", "hr_only"), ("paired", "paired"), ("lr", "lr_only"), ("pairs", "p.json")):
        counts = []
        for cap in ([], ["evaluate.data.max_images=2"]):
            cfg = _cfg("evaluate.data.center_crop=null", *cap).evaluate.data
            items, _ = load_items(tmp_path / folder, kind, cfg, pairs_reader=lambda _: iter(shards))
            counts.append(len(items))
        assert counts == [4 if kind == "pairs" else 3, 2], kind


def test_data_copy_quarantined_mb_decides_which_bad_files_are_kept(tmp_path, monkeypatch):
    from srcompress.tasks.degrade import step

    monkeypatch.setattr(step, "get_run_logger", _Log)
    src = tmp_path / "src"
    _png(src / "good.png", 64, 0)
    (src / "small.png").write_bytes(b"not an image" * 40)  # 480 bytes
    (src / "large.png").write_bytes(b"not an image" * 400)  # 4800 bytes

    def copied(limit_mb: float, work: Path) -> dict:
        cfg = _cfg(f"data.source={src}", f"data.copy_quarantined_mb={limit_mb}", "degrade.crop_size=32")
        res = step.scan_sources.fn(_ctx(work), cfg.data, cfg.degrade)
        return {q.name: q.copied_to for q in res.quarantined}

    kept = copied(0.001, tmp_path / "a")  # 1048 bytes
    assert kept["large.png"] is None and kept["small.png"] is not None
    assert Path(kept["small.png"].removeprefix("file://")).read_bytes() == (src / "small.png").read_bytes()
    assert copied(0, tmp_path / "b") == {"small.png": None, "large.png": None}
    assert all(copied(1, tmp_path / "c").values())



# ---------------------------------------------------------------------------------------------------------
# teacher.*: the tiny bootstrap teacher's recipe (models/teachers/bootstrap.py) and the step's time budget

BOOT = ["search.n=1", "search.m=1", "teacher.bootstrap.num_layers=1", "teacher.bootstrap.heads=1",
        "teacher.bootstrap.head_dim=4", "teacher.bootstrap.patch_size=2", "teacher.bootstrap.tile=8",
        "teacher.bootstrap.vae_channels=[8]", "teacher.bootstrap.latent_channels=3", "teacher.bootstrap.batch_size=2",
        "teacher.bootstrap.vae_crop=8", "teacher.bootstrap.val_fraction=0", "teacher.bootstrap.vae_steps=0",
        "teacher.bootstrap.restorer_steps=2", "teacher.bootstrap.checkpoint_every=0"]


@pytest.fixture(scope="module")
def pairs16():
    g = torch.Generator().manual_seed(0)
    hq = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 20, 20, generator=g), 5, 1)  # 16x16, smooth
    lq = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(hq, 4), size=16, mode="bicubic").clamp(0, 1)
    return lq, hq


def _boot(pairs, *overrides: str):
    from srcompress.models.teachers.bootstrap import train_tiny_teacher

    torch.manual_seed(0)
    return train_tiny_teacher(*pairs, _cfg(*BOOT, *overrides).teacher.bootstrap, log=lambda _: None)


def _delta(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def test_bootstrap_text_and_pooled_dims_size_the_prompt_path(pairs16):
    t, _ = _boot(pairs16, "teacher.bootstrap.text_dim=12", "teacher.bootstrap.pooled_dim=20",
                 "teacher.bootstrap.restorer_steps=0")
    assert t.prompt_embeds.shape[-1] == 12 and t.backbone.context_embedder.in_features == 12
    assert t.pooled_prompt_embeds.shape[-1] == 20
    assert t.backbone.time_text_embed.text_embedder.linear_1.in_features == 20
    assert t.restore_latent(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)  # the teacher runs with them


def test_bootstrap_vae_lr_and_kl_weight_drive_the_vae_phase(pairs16):
    init, _ = _boot(pairs16, "teacher.bootstrap.restorer_steps=0")
    phase = ["teacher.bootstrap.vae_steps=2", "teacher.bootstrap.restorer_steps=0"]
    slow, s_slow = _boot(pairs16, *phase, "teacher.bootstrap.vae_lr=1e-5", "teacher.bootstrap.kl_weight=0")
    fast, _ = _boot(pairs16, *phase, "teacher.bootstrap.vae_lr=1e-1", "teacher.bootstrap.kl_weight=0")
    d_slow, d_fast = _delta(slow.vae, init.vae), _delta(fast.vae, init.vae)
    assert 0 < d_slow and d_fast > 100 * d_slow  # Adam steps scale with the learning rate
    _, s_kl = _boot(pairs16, *phase, "teacher.bootstrap.vae_lr=1e-5", "teacher.bootstrap.kl_weight=1")
    kl0, kl1 = s_slow["curves"]["vae_loss"][0], s_kl["curves"]["vae_loss"][0]
    assert kl1 - kl0 > 1e-3  # the first loss (before any update) adds kl_weight · KL


def test_bootstrap_restorer_lr_and_loss_weights(pairs16):
    init, _ = _boot(pairs16, "teacher.bootstrap.restorer_steps=0")
    slow, s1 = _boot(pairs16, "teacher.bootstrap.restorer_lr=1e-6")
    fast, _ = _boot(pairs16, "teacher.bootstrap.restorer_lr=1e-2")
    d_slow, d_fast = (float((m.backbone.proj_out.weight - init.backbone.proj_out.weight).abs().max())
                      for m in (slow, fast))
    assert 0 < d_slow and d_fast > 1000 * d_slow
    _, s2 = _boot(pairs16, "teacher.bootstrap.restorer_lr=1e-6", "teacher.bootstrap.latent_weight=2.5")
    first = s1["curves"]["restorer_loss"][0]  # step 0: the same batch, v = 0 (proj_out starts at zero)
    assert first > 0 and s2["curves"]["restorer_loss"][0] == pytest.approx(2.5 * first, rel=1e-5)
    pix, s3 = _boot(pairs16, "teacher.bootstrap.restorer_lr=1e-6", "teacher.bootstrap.pixel_weight=1")
    assert s3["curves"]["restorer_loss"][0] > first + 1e-3  # + pixel_weight · L1(decode, HQ)
    _, s4 = _boot(pairs16, "teacher.bootstrap.restorer_lr=1e-6", "teacher.bootstrap.boundary_weight=1")
    assert s4["curves"]["restorer_loss"][0] > first + 1e-4  # + boundary_weight · seam term (x0 = z_L ≠ z_H)
    assert _delta(pix.vae.decoder, init.vae.decoder) > 0  # the decoder trains only with a pixel term
    assert _delta(slow.vae.decoder, init.vae.decoder) == 0


def test_bootstrap_max_seconds_warns_when_the_budget_is_exceeded(tmp_path, monkeypatch, pairs16):
    from srcompress.tasks.teacher import step

    log = _Log()
    monkeypatch.setattr(step, "get_run_logger", lambda: log)
    monkeypatch.setattr(step, "load_all_pairs", lambda store, m: (pairs16[0][..., ::4, ::4], pairs16[1]))
    monkeypatch.setattr(step, "training_plot", lambda curves, best: b"png")
    monkeypatch.setattr(RunContext, "get_tracker", lambda self: _Tracker())
    for budget, work in (("1e-6", "a"), ("1e6", "b")):
        cfg = _cfg(*BOOT, "teacher.bootstrap.restorer_steps=1", f"teacher.bootstrap.max_seconds={budget}").teacher
        m = step.bootstrap.fn(_ctx(tmp_path / work), cfg, _manifest("pairs"), None, "k" * 64, "c" * 64, "v", "r")
        assert m.kind == "teacher"
    over = [w for w in log.warnings if "over the" in w and "budget" in w]
    assert len(over) == 1 and "over the 0s budget" in over[0]


def test_lq_upsample_and_kl_axis_are_fixed_conventions_not_keys():
    """Both had one allowed value (they selected nothing); they are recorded constants now, not config keys."""
    cfg = _cfg()
    assert cfg.teacher.lq_upsample == "bicubic" and cfg.redundancy.kl_axis == "channels"
    assert not {"teacher.lq_upsample", "redundancy.kl_axis"} & set(config_keys())
    for old in ("teacher.lq_upsample=bicubic", "redundancy.kl_axis=channels"):
        with pytest.raises(ConfigError, match="unknown key"):
            _cfg(old)


# ---------------------------------------------------------------------------------------------------------
# encode.*: what the latent cache holds, and the actor's threads


def test_encode_teacher_output_false_caches_no_teacher_latents_and_training_says_why(tmp_path):
    from safetensors.torch import save

    from srcompress.tasks.distill.data import training_set
    from srcompress.tasks.encode.worker import encode_pairs

    teacher = _tiny_teacher(channels=3)
    lq = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    hq = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    meta = [{"digest": "a" * 64, "crop_index": i} for i in range(2)]
    on = encode_pairs(teacher, lq, hq, meta, _cfg().encode)
    off = encode_pairs(teacher, lq, hq, meta, _cfg("encode.teacher_output=false").encode)
    assert set(on) == {"lq", "hq", "teacher"} and set(off) == {"lq", "hq"}
    assert torch.equal(on["lq"], off["lq"]) and torch.allclose(on["teacher"], teacher.restore_latent(on["lq"]))
    # a cache made without teacher outputs cannot train a student: the error names the key
    store = LocalStore(tmp_path / "store")
    obj = store.put_bytes("encode/shards/0.safetensors", save(off))
    index = store.put_bytes("encode/index.json", json.dumps({"shards": [{"index": 0, "key": obj.key,
                                                                          "sha256": obj.sha256, "count": 2}]}).encode())
    with pytest.raises(ValueError, match=r"encode\.teacher_output: true"):
        training_set(store, _manifest("latents", uri=index.uri, extra={"index_sha256": index.sha256}), None, 2, 0,
                     pixels=False)


def test_encode_threads_per_actor_sets_the_actor_threads(tmp_path, monkeypatch):
    from srcompress.tasks.encode import worker

    monkeypatch.setattr(worker, "materialize_teacher", lambda *a, **k: _tiny_teacher(channels=3))
    before = torch.get_num_threads()
    try:
        for n in (1, 3):
            cfg = _cfg(f"encode.threads_per_actor={n}")
            worker.EncoderActor(_ctx(tmp_path).model_dump_json(), _manifest("teacher").to_json(),
                                cfg.teacher.model_dump_json(), cfg.encode.model_dump_json(), "v", "c")
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# search.* and distill.*: the Gumbel schedule, the baselines, the student build, stage 2's losses, DeepSpeed


RANK_ENV = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}


@pytest.fixture(scope="session")
def _deepspeed_process_group():
    """DeepSpeed's process group on one CPU rank (gloo) in this test process, as a training rank has it.
    Made once per process and kept: DeepSpeed caches its groups, so a destroyed one cannot be made again.
    DeepSpeed's shared-memory all-reduce op (a C++ build on first use, minutes) serves multi-rank CPU runs only,
    so it is not built."""
    import importlib

    import deepspeed

    from tests.conftest import free_port

    ds_torch = importlib.import_module("deepspeed.comm.torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ds_torch, "build_shm_op", lambda: None)
        for k, v in {**RANK_ENV, "MASTER_PORT": str(free_port())}.items():
            mp.setenv(k, v)
        threads = torch.get_num_threads()
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo")
        torch.set_num_threads(threads)
    yield deepspeed
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture()
def one_rank(_deepspeed_process_group, monkeypatch):
    """The one-rank DeepSpeed of this process, with the launcher's environment for the test's duration."""
    for k, v in RANK_ENV.items():
        monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    yield _deepspeed_process_group
    torch.set_num_threads(threads)  # init_rank sets the rank's threads


class _Spy:
    """``deepspeed`` with ``initialize`` recorded: each engine's module and its weights before training."""

    def __init__(self, deepspeed):
        self.ds, self.engines = deepspeed, []

    def initialize(self, model, **kw):
        before = [p.detach().clone() for p in model.parameters()]
        out = self.ds.initialize(model=model, **kw)
        self.engines.append((out[0], before))
        return out

    def moved(self, i: int) -> float:
        engine, before = self.engines[i]
        return max(float((p.detach() - q).abs().max()) for p, q in zip(engine.module.parameters(), before))


def test_search_tau_start_and_tau_end_set_the_gumbel_schedule(tmp_path, monkeypatch, one_rank):
    from srcompress.tasks.search import worker

    monkeypatch.setattr(worker, "fetch_teacher_folder", lambda *a: tmp_path)
    monkeypatch.setattr(worker, "load_teacher", lambda *a, **k: _tiny_teacher(layers=2))
    g = torch.Generator().manual_seed(0)
    cal = {"lq": torch.randn(4, 4, 8, 8, generator=g), "teacher": torch.randn(4, 4, 8, 8, generator=g)}
    monkeypatch.setattr(worker, "calibration_subset", lambda *a: cal)
    monkeypatch.setattr(RunContext, "get_tracker", lambda self: _Tracker())
    cfg = _cfg("search.n=1", "search.m=2", "search.steps=3", "search.log_every=1", "search.batch_size=2",
               "search.lora_rank=0", "search.checkpoint_every=0", "search.deepspeed.zero_stage=0",
               "search.tau_start=2.0", "search.tau_end=0.5")
    ctx = _ctx(tmp_path)
    worker.search_loop({"ctx": ctx.model_dump_json(), "cfg": cfg.search.model_dump_json(),
                        "teacher_cfg": cfg.teacher.model_dump_json(), "latents": _manifest("latents").to_json(),
                        "teacher": _manifest("teacher").to_json(), "key": "k" * 64, "run_id": "r", "fixed_mask": None})
    result = json.loads(ctx.get_store().get_bytes(f"search/{'k' * 24}/result.json"))
    assert [h["tau"] for h in result["history"]] == pytest.approx([2.0, 1.25, 0.5])


def test_search_method_pgp_cos_and_pgp_kl_keep_the_blocks_their_own_score_ranks_highest(tmp_path):
    from srcompress.tasks.redundancy.report import summarise
    from srcompress.tasks.search.step import baseline_mask

    names = [f"transformer_blocks.{i}" for i in range(4)]
    per_image = {"block_influence": [[1.0, 2], [3, 4], [5, 6], [7, 8]],  # (blocks, images)
                 "pgp_cos": [[9.0, 9], [1, 1], [1, 1], [9, 9]], "pgp_kl": [[1.0, 1], [9, 9], [9, 9], [1, 1]],
                 "removal_l1": [[1.0, 1], [1, 2], [2, 2], [3, 3]], "removal_psnr_y": [[1.0, 1], [2, 2], [3, 3], [4, 4]]}
    report = summarise(names, {k: torch.tensor(v) for k, v in per_image.items()})
    ctx = _ctx(tmp_path)
    obj = ctx.get_store().put_bytes("redundancy/report.json", json.dumps(report).encode())
    red = _manifest("redundancy", uri=obj.uri, digest=obj.sha256)
    masks = {}
    for method in ("pgp_cos", "pgp_kl"):
        cfg = _cfg("search.n=1", "search.m=2", f"search.method={method}")
        masks[method] = baseline_mask(ctx, cfg.search, cfg.teacher, _manifest("teacher"), _manifest("latents"), red, 4)
    assert masks == {"pgp_cos": [1.0, 0.0, 0.0, 1.0], "pgp_kl": [0.0, 1.0, 1.0, 0.0]}
    with pytest.raises(ValueError, match="analyse_redundancy"):
        baseline_mask(ctx, _cfg("search.m=2", "search.n=1", "search.method=pgp_kl").search, _cfg().teacher,
                      _manifest("teacher"), _manifest("latents"), None, 4)


def test_deepspeed_gradient_clipping_bounds_the_step_of_search_and_distill_engines(one_rank):
    """Real DeepSpeed engines from each section's config: an SGD step of lr 1 moves the weights by the gradient,
    whose norm DeepSpeed clips, so the step's size is the clip when clipping is on."""
    def step(section: str, *overrides: str) -> float:
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 4)
        before = [p.detach().clone() for p in m.parameters()]
        cfg = getattr(_cfg(f"{section}.deepspeed.zero_stage=0", *overrides), section).deepspeed  # SGD: no ZeRO
        engine, *_ = one_rank.initialize(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=1.0),
                                         config=cfg.engine_config(2))
        engine.backward((engine(torch.full((2, 4), 100.0)) ** 2).mean())
        engine.step()
        return float(sum(((p.detach() - b) ** 2).sum() for p, b in zip(m.parameters(), before)) ** 0.5)

    assert step("search", "search.deepspeed.gradient_clipping=0.01") == pytest.approx(0.01, rel=1e-3)
    assert step("search", "search.deepspeed.gradient_clipping=0") > 100
    assert step("distill", "distill.deepspeed.gradient_clipping=0.5") == pytest.approx(0.5, rel=1e-3)
    assert step("distill", "distill.deepspeed.gradient_clipping=0") > 100
    # each section reads its own: clipping one leaves the other alone
    assert step("distill", "search.deepspeed.gradient_clipping=0.01", "distill.deepspeed.gradient_clipping=0") > 100


def test_distill_merge_search_lora_decides_whether_the_student_carries_the_search_lora(tmp_path, monkeypatch):
    from safetensors.torch import save

    from srcompress.models.pruning.search import MaskSearch
    from srcompress.models.student.student import build_student
    from srcompress.tasks.distill import build

    search = MaskSearch(_tiny_teacher(layers=4), n=1, m=2, lora_rank=2, lora_alpha=4)
    with torch.no_grad():
        for n, p in search.teacher.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    ctx = _ctx(tmp_path)
    lora = ctx.get_store().put_bytes("search/lora.safetensors", save(search.lora_state()))
    result = {"teacher_digest": "t" * 64, "mask": [1, 0, 0, 1],
              "lora": {"key": lora.key, "sha256": lora.sha256, "rank": 2, "alpha": 4}}
    monkeypatch.setattr(build, "teacher_on", lambda *a: _tiny_teacher(layers=4))
    monkeypatch.setattr(build, "search_result", lambda *a: result)
    z = torch.randn(1, 4, 8, 8)
    out = {}
    for merge in (True, False):
        cfg = _cfg(f"distill.merge_search_lora={str(merge).lower()}").distill
        student = build.stage1_student(ctx, cfg, _cfg().teacher, _manifest("teacher", digest="t" * 64),
                                       _manifest("mask"), False, torch.device("cpu"))
        with torch.no_grad():
            out[merge] = student.restore_tile(z)
    with torch.no_grad():
        only = _cfg().distill.image_only("sd3")  # the references shaped as the config shapes the student
        merged = build_student(_tiny_teacher(layers=4), [1, 0, 0, 1], search.lora_state(), 2, 4,
                               image_only=only).restore_tile(z)
        plain = build_student(_tiny_teacher(layers=4), [1, 0, 0, 1], image_only=only).restore_tile(z)
    assert torch.allclose(out[True], merged, atol=1e-5) and torch.allclose(out[False], plain, atol=1e-5)
    assert not torch.allclose(out[True], out[False], atol=1e-3)


def test_phase_ablation_and_route_comparison_add_their_students_and_table_rows(tmp_path, monkeypatch):
    """distill.phase_ablation distils the same mask with each other adapter setting; search.compare_methods
    distils each other route's mask with the main settings; each is a table row of its own."""
    from srcompress.flows import compress

    calls = []

    def run_distill(ctx, cfg, teacher_cfg, stage, phase, mask, stage1=None, variant="", **common):
        calls.append((stage, phase, mask.step, variant, stage1))
        return _manifest("student", step=f"distill_{stage}", digest=f"{stage}-{phase}-{variant}".ljust(64, "0"))

    monkeypatch.setattr("srcompress.tasks.distill.step.run_distill", run_distill)  # the flow imports it per call
    manifests = {k: _manifest(k, step=k) for k in ("encode_latents", "degrade", "bootstrap_teacher", "search_pruning",
                                                   "search_pruning_route_learned")}
    plain = compress.distill(_ctx(tmp_path), _cfg("distill.phase_adapter=peam"), manifests, pixel=True)
    assert list(plain) == ["distill_latent", "distill_pixel"]
    assert set(compress.evaluated_models({**manifests, **plain})) == {"teacher", "pruned", "searched", "student_stage1",
                                                                   "student"}
    calls.clear()
    cfg = _cfg("distill.phase_adapter=peam", "distill.phase_ablation=[none, post]", "search.method=pgp_progressive",
               "search.compare_methods=[learned]")
    out = compress.distill(_ctx(tmp_path), cfg, manifests, pixel=True)
    assert list(out) == ["distill_latent", "distill_pixel", "distill_latent_phase_none", "distill_pixel_phase_none",
                         "distill_latent_phase_post", "distill_pixel_phase_post", "distill_latent_route_learned",
                         "distill_pixel_route_learned"]
    assert [(s, p, m, v) for s, p, m, v, _ in calls] == [
        ("stage1", "peam", "search_pruning", ""), ("stage2", "peam", "search_pruning", ""),
        ("stage1", "none", "search_pruning", "_phase_none"), ("stage2", "none", "search_pruning", "_phase_none"),
        ("stage1", "post", "search_pruning", "_phase_post"), ("stage2", "post", "search_pruning", "_phase_post"),
        ("stage1", "peam", "search_pruning_route_learned", "_route_learned"),
        ("stage2", "peam", "search_pruning_route_learned", "_route_learned")]
    assert calls[3][4] is out["distill_latent_phase_none"]  # each variant's stage 2 starts from its own stage 1
    models = compress.evaluated_models({**manifests, **out})
    assert models["student_phase_none"] is out["distill_pixel_phase_none"] and models["student"] is out["distill_pixel"]
    assert models["student_route_learned"] is out["distill_pixel_route_learned"]
    assert compress.search_routes(cfg) == [("pgp_progressive", ""), ("learned", "_route_learned")]
    assert compress.last_step_for(["student_phase_none"]) == compress.last_step_for(["student_route_learned"]) \
        == "distill_pixel"
    rows = _cfg("distill.phase_ablation=[none]", "distill.phase_adapter=post",
                "evaluate.models=[bicubic, student_phase_none]").evaluate.models
    assert rows == ["bicubic", "student_phase_none"]
    legacy = _cfg("distill.phase_adapter=true", "distill.phase_ablation=true").distill  # configs before PEAM
    assert legacy.phase_adapter == "post" and legacy.phase_ablation == ["none"]
    assert _cfg("distill.phase_ablation=true").distill.phase_ablation == ["post"]
    with pytest.raises(ConfigError, match="add post to distill.phase_ablation"):
        _cfg("evaluate.models=[bicubic, student_phase_post]")
    with pytest.raises(ConfigError, match="add removal to search.compare_methods"):
        _cfg("evaluate.models=[bicubic, student_route_removal]")
    with pytest.raises(ConfigError, match="list other routes"):
        _cfg("search.compare_methods=[learned]")
    with pytest.raises(ConfigError, match="phase_adapter"):
        _cfg("distill.phase_adapter=post", "distill.phase_ablation=[post]")


def _stage2(deepspeed, *overrides, teacher_value: float | None = None):
    from srcompress.models.student.student import build_student
    from srcompress.tasks.distill.worker import Stage2

    spy = _Spy(deepspeed)
    cfg = _cfg("distill.deepspeed.zero_stage=0", "distill.stage2.steps=3", "distill.stage2.batch_size=2",
               "distill.stage2.perceptual_weight=0",
               "distill.stage2.discriminator=patch", "distill.log_every=1", "distill.checkpoint_every=0",
               *overrides).distill
    torch.manual_seed(0)
    student = build_student(_tiny_teacher(layers=2), [1, 0])
    g = torch.Generator().manual_seed(0)
    data = {"lq": torch.randn(4, 4, 8, 8, generator=g), "teacher": torch.randn(4, 4, 8, 8, generator=g),
            "hq": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)}
    if teacher_value is not None:
        data["teacher"] = torch.full_like(data["teacher"], teacher_value)
    # rank 1 of 1: no MLflow tracker (rank 0 logs); checkpoints off
    run = Stage2(None, cfg, student, data, torch.device("cpu"), 1, 1, spy, None, None, None)
    return run.train(), spy


def test_distill_stage2_l1_weight_and_l1_target(one_rank):
    hist, _ = _stage2(one_rank, "distill.stage2.gan_weight=0", "distill.stage2.l1_weight=3")
    assert len(hist) == 3 and all(h["loss"] == pytest.approx(3 * h["l1"], rel=1e-6) for h in hist)
    far = 1000.0  # teacher latents far from anything the decoder outputs: which target the L1 uses shows at once
    to_latent, _ = _stage2(one_rank, "distill.stage2.gan_weight=0", "distill.stage2.l1_target=teacher_latent",
                           teacher_value=far)
    to_pixels, _ = _stage2(one_rank, "distill.stage2.gan_weight=0", "distill.stage2.l1_target=hq_pixels",
                           teacher_value=far)
    assert to_latent[0]["l1"] > far / 2 and to_pixels[0]["l1"] < 50


def test_distill_stage2_gan_start_and_d_lr(one_rank):
    hist, spy = _stage2(one_rank, "distill.stage2.gan_weight=0.5", "distill.stage2.gan_start=2",
                        "distill.stage2.d_lr=1e-9")
    assert ["g_adv" in h for h in hist] == [False, False, True] and all("d_loss" in h for h in hist)
    slow = spy.moved(1)  # engines: generator, discriminator
    _, spy = _stage2(one_rank, "distill.stage2.gan_weight=0.5", "distill.stage2.gan_start=0",
                     "distill.stage2.d_lr=1e-2")
    assert spy.moved(1) > 1e4 * max(slow, 1e-12) and spy.moved(1) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# evaluate.*: metric conventions and the report's grids


def _photo(size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=g), size=size, mode="bicubic")
    return (x + 0.05 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_evaluate_metric_conventions_reach_the_metrics():
    """``metric_env(cfg.evaluate)`` → the metric builders: each convention key changes the number it governs,
    and only that one."""
    from srcompress.models.iqa import build_metric
    from srcompress.tasks.evaluate.step import metric_env

    def score(metric, *overrides, sr, hq=None):
        env = metric_env(_cfg(f"evaluate.metrics=[{metric}]", *overrides).evaluate)
        return float(build_metric(metric, env).score(sr, hq)[0])

    hq, sr = _photo(384, 0), _photo(384, 1)  # 384 px: ssim.m downsamples by round(384/256) = 2
    plain = score("ssim", "evaluate.ssim_downsample=false", sr=sr, hq=hq)
    assert abs(score("ssim", "evaluate.ssim_downsample=true", sr=sr, hq=hq) - plain) > 1e-3
    assert score("ssim", "evaluate.niqe_color_space=yiq", "evaluate.st_lpips_net=vgg", sr=sr, hq=hq) == plain
    ycbcr = score("niqe", "evaluate.niqe_color_space=ycbcr", sr=sr)
    assert abs(score("niqe", "evaluate.niqe_color_space=yiq", sr=sr) - ycbcr) > 1e-3
    assert score("niqe", "evaluate.ssim_downsample=true", sr=sr) == ycbcr
    assert abs(score("niqe", "evaluate.niqe_color_space=gray", sr=sr) - ycbcr) > 1e-3
    product = score("ms_ssim", "evaluate.ms_ssim_method=product", sr=sr, hq=hq)
    assert abs(score("ms_ssim", "evaluate.ms_ssim_method=wtd_sum", sr=sr, hq=hq) - product) > 1e-3
    assert abs(score("ms_ssim", "evaluate.color_space=gray", sr=sr, hq=hq) - product) > 1e-4
    assert score("ssim", "evaluate.ms_ssim_method=wtd_sum", sr=sr, hq=hq) == plain
    small_sr, small_hq = sr[..., :64, :64], hq[..., :64, :64]
    alex = score("st_lpips", "evaluate.st_lpips_net=alex", sr=small_sr, hq=small_hq)
    vgg = score("st_lpips", "evaluate.st_lpips_net=vgg", sr=small_sr, hq=small_hq)
    assert abs(alex - vgg) > 1e-3
    vgg_env = metric_env(_cfg("evaluate.st_lpips_net=vgg", "evaluate.metrics=[psnr]").evaluate)
    assert build_metric("st_lpips", vgg_env).info.backend == "stlpips-pytorch/vgg"


def test_evaluate_grid_crop_sets_the_size_of_the_published_grids(tmp_path, monkeypatch):
    from srcompress.tasks.evaluate import step
    from srcompress.tasks.evaluate.datasets import EvalItem

    rng = np.random.default_rng(0)
    items = [EvalItem(f"img{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                      rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), str(i) * 64) for i in range(2)]
    monkeypatch.setattr(step, "get_run_logger", _Log)
    monkeypatch.setattr(step, "read_eval_set", lambda ctx, m: (items, {}))
    widths = {}
    for crop in (32, 48):
        cfg = _cfg(f"evaluate.grid_crop={crop}", "evaluate.models=[bicubic]", "evaluate.metrics=[psnr]",
                   "evaluate.efficiency.enabled=false", "evaluate.grid_images=1")
        r = step.score_and_report.fn(_ctx(tmp_path / str(crop)), cfg.evaluate,
                                     _manifest("eval_set", extra={"scale": 4}), {}, cfg.teacher, {}, "k" * 64)
        grids = sorted((Path(r["out"]) / "grids").glob("*.png"))
        assert len(grids) == 1
        widths[crop] = Image.open(grids[0]).size[0]
    assert widths == {32: 3 * 32 + 4, 48: 3 * 48 + 4}  # LQ | bicubic | HQ, 2-px gaps


# ---------------------------------------------------------------------------------------------------------
# registry.*: which aliases the register step moves and consults


class _Registry:
    """MLflow's model registry as the register step uses it (infra/registry.py), in memory."""

    def __init__(self):
        self.versions: dict[str, dict] = {}
        self.aliases: dict[str, str] = {}

    def install(self, monkeypatch, registry):
        monkeypatch.setattr(registry, "find_version", lambda uri, name, tag, value: None)
        monkeypatch.setattr(registry, "register_student", self.register)
        monkeypatch.setattr(registry, "move_alias",
                            lambda uri, name, alias, v, how, reason: self.aliases.__setitem__(alias, v))
        monkeypatch.setattr(registry, "alias_version", lambda uri, name, alias: self.aliases.get(alias))
        monkeypatch.setattr(registry, "version_info", lambda uri, name, v: {"tags": self.versions[v]})
        monkeypatch.setattr(registry, "set_version_tags", lambda uri, name, v, tags: self.versions[v].update(tags))

    def register(self, uri, run_id, name, folder, model_config, tags, description=""):
        version = str(len(self.versions) + 1)
        self.versions[version] = dict(tags)
        return version


def test_registry_candidate_and_champion_aliases_name_what_the_step_moves_and_compares(tmp_path, monkeypatch):
    from srcompress.infra import registry
    from srcompress.tasks.register import step

    reg = _Registry()
    reg.install(monkeypatch, registry)
    # version 1: the champion under the default alias, evaluated on some set
    reg.versions["1"] = {"lineage.evaluate.digest": "e" * 64, "lineage.eval_data.digest": "s" * 64}
    reg.aliases["champion"] = "1"
    monkeypatch.setattr(step, "get_run_logger", _Log)
    monkeypatch.setattr(step, "fetch_teacher_folder", lambda *a: tmp_path)
    monkeypatch.setattr(RunContext, "get_tracker", lambda self: _Tracker())
    student = {"distill_pixel": _manifest("student", step="distill_pixel")}

    def register(*overrides):
        cfg = _cfg(*overrides).registry
        return step.run_register(_ctx(tmp_path), cfg, student, 4, {}, "c" * 64)

    # own alias names: "gold" has no holder yet, so the new version takes it; "champion" is not touched
    m = register("registry.candidate_alias=rc", "registry.champion_alias=gold")
    assert m.extra["aliases"] == ["rc", "gold"] and reg.aliases == {"champion": "1", "rc": "2", "gold": "2"}
    # the default names: the gate compares with "champion" (v1), which a version without evaluation cannot beat
    m = register()
    assert m.extra["aliases"] == ["candidate"] and m.extra["gate"]["champion"] == "1"
    assert reg.aliases == {"champion": "1", "rc": "2", "gold": "2", "candidate": "3"}


# ---------------------------------------------------------------------------------------------------------
# run.ray_address: auto


def test_run_ray_address_auto_joins_the_running_cluster_instead_of_starting_one(tmp_path, monkeypatch):
    import ray

    from srcompress.flows.common import register, resolve
    from srcompress.infra.ray_cluster import ray_session

    with pytest.raises(ConfigError, match="run.ray_address is set but store.uri is a local-disk store"):
        _cfg("run.ray_address=auto")
    cfg = _cfg("run.ray_address=auto", "run.shared_filesystem=true", f"store.uri={tmp_path / 'store'}")
    _, ctx = resolve({}, str(tmp_path), config_ref=register(cfg)[1])
    assert ctx.ray_address == "auto"
    calls: list = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{}, {}])
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with ray_session(ctx.ray_address) as info:
        assert info == "auto (8 CPUs, 2 node(s))"
    with ray_session(None, num_cpus=2) as info:
        assert info.startswith("local ")
    joined, started = calls[0], calls[2]
    assert joined["address"] == "auto" and "num_cpus" not in joined  # join: the cluster's own resources
    assert started["address"] == "local" and started["num_cpus"] == 2  # None: a fresh local cluster
    assert calls[1] == calls[3] == "shutdown"  # disconnect after the step either way

if __name__ == "__main__":  # the derived list: keys whose name appears in no test file
    skip = (Path(__file__).resolve(),) if "--not-self" in sys.argv else ()
    missing = untested_keys(skip)
    print(f"{len(missing)} of {len(config_keys())} config keys appear in no test file:")
    print("\n".join(f"  {k}" for k in missing))
