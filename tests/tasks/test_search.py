"""search_pruning through the flow: DeepSpeed ranks on Ray, the mask manifest, MLflow records, cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.config import ConfigError
from srcompress.infra.ray_cluster import RankFailed
from tests.upstream import UPSTREAM, seed_workdir

pytestmark = pytest.mark.usefixtures("prefect_harness")

SEARCH = UPSTREAM + ["search.n=1", "search.m=2", "search.steps=6",
                 "search.calibration_size=6", "search.batch_size=2", "search.lora_rank=2", "search.lora_alpha=2",
                 "search.log_every=2", "search.checkpoint_every=2"]


def _run(client: MlflowClient, summary: dict, step: str):
    runs = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return next(r for r in runs if r.info.run_name == step)


@pytest.fixture
def shared_ray():
    """One local Ray for all of a test's DAG runs: their Ray steps (encode_latents, search_pruning) join it
    (``ray_session``'s join branch, as under ``run.ray_address``) instead of each starting and stopping a cluster
    of its own (5-15 s apiece on 2 cores). The two-rank test
    (test_learned_search_on_two_deepspeed_ranks_at_zero_2_bf16_with_accumulation) keeps the step's own
    start-and-stop path."""
    from srcompress.infra.ray_cluster import ray_session

    with ray_session(None):
        yield


@pytest.mark.slow
def test_learned_search_on_two_deepspeed_ranks_at_zero_2_bf16_with_accumulation(upstream_workdir):
    """Two ranks; read back from the DeepSpeed engine, not from our config: ZeRO-2 wrapped the optimizer, the
    trainable weights are bf16, and 6 micro-steps with accumulation 2 made exactly 3 optimizer steps. The same
    facts of a default engine (one rank, ZeRO-1, float32, one optimizer step per micro-step) are read back from
    the session's two-stage run (tests/tasks/test_distill.py)."""
    cfg = load_config("tiny", SEARCH + ["search.num_workers=2", "search.deepspeed.zero_stage=2",
                                        "search.deepspeed.bf16=true", "search.deepspeed.gradient_accumulation=2"])
    first = run_pipeline(cfg, upstream_workdir, until="search_pruning")
    assert first["outcomes"]["encode_latents"] == "cached"  # the session upstream, not recomputed
    m = first["steps"]["search_pruning"]
    assert m["kind"] == "mask" and m["counts"] == {"blocks": 2, "kept": 1, "world_size": 2}
    assert m["extra"]["mask"] in ([1, 0], [0, 1]) and len(m["extra"]["kept"]) == 1
    result = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    assert result["world_size"] == 2 and len(result["history"]) == 3  # logged every 2 of 6 micro-steps
    assert result["deepspeed"]["zero_optimization"]["stage"] == 2
    eng = m["extra"]["engine"]
    assert eng["zero_stage"] == 2 and eng["optimizer"] == "DeepSpeedZeroOptimizer", eng
    assert eng["bf16"] and eng["param_dtype"] == "bfloat16", eng
    assert eng["gradient_accumulation_steps"] == 2 and eng["optimizer_steps"] == 3, eng
    assert {"gates.png", "loss.png", "lora.safetensors", "result.json"} <= set(m["extra"]["files"])
    client = MlflowClient(first["tracking_uri"])
    run = _run(client, first, "search_pruning")
    assert run.data.params["world_size"] == "2"
    assert run.data.params["deepspeed_config.zero_optimization.stage"] == "2"
    assert {"search/gates.png", "search/loss.png"} <= {a.path for a in client.list_artifacts(run.info.run_id, "search")}
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    again = run_pipeline(cfg, upstream_workdir, until="search_pruning")
    assert again["outcomes"]["search_pruning"] == "cached"


def test_bad_search_configs_name_the_key(upstream_workdir):
    with pytest.raises(ConfigError, match=r"search: .*n=3 > m=2"):
        load_config("tiny", ["search.n=3", "search.m=2"])
    with pytest.raises(ConfigError, match=r"search\.m=3 must divide the bootstrap teacher's 2 blocks"):
        load_config("tiny", SEARCH + ["search.m=3", "search.n=1"])  # at load, before any work
    with pytest.raises(ConfigError, match=r"vae_widths chooses the tiny VAE's width: it needs distill\.tiny_vae"):
        load_config("tiny", ["search.budget={metric: params, value: 1e6, vae_widths: [8]}"])
    with pytest.raises(ConfigError, match=r"method=given takes its mask as is"):
        load_config("tiny", ["search.method=given", "search.given_mask=[1, 0, 1, 0, 1, 0, 1, 0]",
                             "search.budget={metric: gmacs, value: 1}"])
    load_config("tiny", SEARCH + ["search.m=3", "search.budget={metric: gmacs, value: 1}"])  # the budget chooses M
    from srcompress.models.teachers import save_teacher
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    folder = save_teacher(tiny_sd3_teacher(seed=3, num_layers=2, tile=32, patch_size=4),
                          upstream_workdir.parent / "teacher")
    cfg = load_config("tiny", SEARCH + ["search.m=3", "search.n=1", f"teacher.source={folder}"])  # imported
    encoded = set((upstream_workdir / "store" / "cache" / "encode_latents").glob("*.json"))
    with pytest.raises(ValueError, match=r"search\.m=3 must divide the teacher's 2 prunable blocks"):
        run_pipeline(cfg, upstream_workdir, until="search_pruning")
    # refused as soon as the imported teacher's depth is known: nothing was encoded with it
    assert set((upstream_workdir / "store" / "cache" / "encode_latents").glob("*.json")) == encoded


def kill_training_ranks_when(pattern: str, store_root: Path, killed: threading.Event) -> None:
    """SIGKILL this test's training rank processes once ``pattern`` exists under ``store_root``. Only
    descendants of the test process (the local Ray cluster it started) are candidates: never another Ray on
    the host."""
    deadline = time.monotonic() + 600
    me = psutil.Process()
    while time.monotonic() < deadline and not killed.is_set():
        if any(store_root.glob(pattern)):
            for p in me.children(recursive=True):
                try:
                    if any("DeepSpeedRank" in part for part in p.cmdline()):
                        p.kill()
                        killed.set()
                except psutil.Error:
                    continue
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_same_logits(tmp_path, upstream_store, shared_ray):
    """A training rank's process is SIGKILLed after a checkpoint reached the store; the rerun resumes from it and
    ends with the EMA logits of an uninterrupted search (same seed, same world size)."""
    cfg = load_config("tiny", SEARCH + ["search.steps=16", "search.checkpoint_every=4", "search.log_every=4"])
    ref = run_pipeline(cfg, seed_workdir(upstream_store, tmp_path / "ref"), until="search_pruning")
    ref = ref["steps"]["search_pruning"]
    work = seed_workdir(upstream_store, tmp_path / "w")
    killed = threading.Event()
    watcher = threading.Thread(target=kill_training_ranks_when,
                               args=("search/*/checkpoint/latest.json", work / "store", killed), daemon=True)
    watcher.start()
    with pytest.raises(RankFailed):  # the killed rank fails the launch, nothing else
        run_pipeline(cfg, work, until="search_pruning")
    assert killed.is_set()
    out = run_pipeline(cfg, work, until="search_pruning")
    m = out["steps"]["search_pruning"]
    client = MlflowClient(out["tracking_uri"])
    losses = client.get_metric_history(_run(client, out, "search_pruning").info.run_id, "loss")
    assert min(x.step for x in losses) > 4  # the rerun started after the checkpoint, not at step 0
    assert m["extra"]["mask"] == ref["extra"]["mask"]
    got, want = sum(m["extra"]["ema_logits"], []), sum(ref["extra"]["ema_logits"], [])
    assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


def identity_blocks_teacher_model(identity: tuple[int, ...], num_layers: int = 4):
    """A random tiny SD3 teacher whose blocks ``identity`` are exact identities on both streams (their attention
    and feed-forward outputs zeroed): removing them changes nothing, removing any other block changes a lot."""
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    teacher = tiny_sd3_teacher(seed=5, num_layers=num_layers, tile=32, patch_size=4)
    with torch.no_grad():
        for i in identity:
            block = teacher.transformer.transformer_blocks[i]
            outs = [block.attn.to_out[0], block.ff.net[2]]  # the image stream's two residual branches
            if block.ff_context is not None:  # the last block of SD3 has no context-stream output
                outs += [block.attn.to_add_out, block.ff_context.net[2]]
            for lin in outs:
                lin.weight.zero_()
                lin.bias.zero_()
    return teacher.eval()


def identity_blocks_teacher(folder: Path, identity: tuple[int, ...], num_layers: int = 4) -> Path:
    """``identity_blocks_teacher_model`` saved as a teacher folder."""
    from srcompress.models.teachers import save_teacher

    return save_teacher(identity_blocks_teacher_model(identity, num_layers), folder)


@pytest.mark.slow
def test_the_learned_search_drops_the_blocks_that_do_nothing(upstream_workdir, shared_ray):
    """2:4 over a teacher whose middle blocks are identities: the only mask that keeps the output is [1, 0, 0, 1]
    — neither the uniform nor the first-N choice, so a search that learned nothing (or read its mask from the
    init) fails."""
    folder = identity_blocks_teacher(upstream_workdir.parent / "teacher", identity=(1, 2))
    cfg = load_config("tiny", SEARCH + [f"teacher.source={folder}", "search.n=2", "search.m=4", "search.steps=40",
                                        "search.lr=1e-2", "search.checkpoint_every=0", "search.log_every=10"])
    m = run_pipeline(cfg, upstream_workdir, until="search_pruning")["steps"]["search_pruning"]
    assert m["extra"]["mask"] == [1, 0, 0, 1], m["extra"]
    assert min(m["extra"]["confidence"]) > 0.5  # the decision is not a near tie


@pytest.mark.slow
def test_baselines_and_given_masks(upstream_workdir, shared_ray):
    """Every baseline yields an N:M mask with the same LoRA recovery; a given mask for another teacher is refused.

    The ranks only ever see a baseline's mask (``fixed``), whatever the method: two go through the DAG and its
    LoRA-recovery ranks — block_influence (it reads the redundancy report) and given (a result.json by URI, no
    report) — and every baseline's mask is the step's own ``baseline_mask`` on the same inputs (the call
    ``run_search`` makes before the ranks start)."""
    from srcompress.infra.context import RunContext
    from srcompress.infra.manifest import Manifest
    from srcompress.tasks.search.step import baseline_mask

    work = upstream_workdir
    cfg = load_config("tiny", SEARCH + ["search.method=block_influence", "search.steps=2"])
    out = run_pipeline(cfg, work, until="search_pruning")
    m = out["steps"]["search_pruning"]
    assert m["extra"]["method"] == "block_influence" and sum(m["extra"]["mask"]) == 1
    assert "redundancy" in m["inputs"] and {"lora.safetensors", "result.json"} <= set(m["extra"]["files"])
    result = json.loads(Path(m["uri"].removeprefix("file://")).read_text())
    assert result["method"] == "block_influence" and result["lora"]["rank"] == 2 and result["steps"] == 2

    up = {k: Manifest.model_validate(v) for k, v in out["steps"].items()}
    ctx = RunContext(workdir=str(work.resolve()), store=cfg.store, tracking=cfg.tracking, device=cfg.run.device)
    blocks = int(up["bootstrap_teacher"].extra["prunable_blocks"])

    def mask_of(method: str, *sets: str) -> list[float]:
        c = load_config("tiny", SEARCH + [f"search.method={method}", "search.random_candidates=3", *sets]).search
        return baseline_mask(ctx, c, cfg.teacher, up["bootstrap_teacher"], up["encode_latents"],
                             up["analyse_redundancy"], blocks)

    masks = {method: mask_of(method) for method in ("uniform", "block_influence", "removal", "random_min")}
    for method, mask in masks.items():
        assert len(mask) == blocks == 2 and sorted(mask) == [0.0, 1.0], (method, mask)  # 1:2
    assert masks["block_influence"] == m["extra"]["mask"]  # what the DAG run handed its ranks
    assert masks["uniform"] == [1, 0]
    given = load_config("tiny", SEARCH + ["search.method=given", f"search.given_mask={m['uri']}", "search.steps=2"])
    g = run_pipeline(given, work, until="search_pruning")["steps"]["search_pruning"]
    assert g["extra"]["method"] == "given" and g["extra"]["mask"] == m["extra"]["mask"]
    assert "redundancy" not in g["inputs"] and "lora.safetensors" in g["extra"]["files"]
    assert mask_of("given", "search.given_mask=[0, 1]") == [0, 1]
    with pytest.raises(ValueError, match=r"search\.given_mask: needs 2 entries"):
        mask_of("given", "search.given_mask=[1, 0, 1]")
    other = result | {"teacher_digest": "f" * 64}
    (work / "other.json").write_text(json.dumps(other))
    bad = load_config("tiny", SEARCH + ["search.method=given", f"search.given_mask={work / 'other.json'}"])
    with pytest.raises(ValueError, match=r"search\.given_mask: that mask was searched for teacher ffffffffffff"):
        run_pipeline(bad, work, until="search_pruning")  # through the DAG, before any rank starts
    with pytest.raises(ConfigError, match="given_mask is required"):
        load_config("tiny", ["search.method=given"])


@pytest.mark.slow
def test_perceptual_term_changes_the_search(upstream_workdir, shared_ray):
    from srcompress.models.teachers import save_teacher
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    # a random (untrained) teacher: removing a block changes its output a lot, so both terms are far from 0
    folder = save_teacher(tiny_sd3_teacher(seed=3, num_layers=2, tile=32, patch_size=4),
                          upstream_workdir.parent / "teacher")
    base = SEARCH + [f"teacher.source={folder}", "search.steps=2", "search.checkpoint_every=0", "search.log_every=1"]
    plain = run_pipeline(load_config("tiny", base), upstream_workdir, until="search_pruning")
    plain = plain["steps"]["search_pruning"]
    perc = run_pipeline(load_config("tiny", base + ["search.perceptual_weight=1.0"]), upstream_workdir,
                        until="search_pruning")["steps"]["search_pruning"]
    lp = [h["loss"] for h in json.loads(Path(perc["uri"].removeprefix("file://")).read_text())["history"]]
    l1 = [h["loss"] for h in json.loads(Path(plain["uri"].removeprefix("file://")).read_text())["history"]]
    assert perc["cache_key"] != plain["cache_key"]
    assert lp[0] > l1[0] + 1e-3  # same first batch and mask (same seed): the ST-LPIPS term is in the loss

