"""One DeepSpeed rank of the search (run by ``infra/ray_cluster.py: train_on_ray``): masked teacher + LoRA + gates.

Every rank loads the teacher, draws the same seeded calibration subset and trains on its slice (``rank::world``);
Gumbel masks are sampled per rank (seeded by (seed, rank)), the gate and LoRA gradients are averaged by the
engine, so the logits — and their EMA — stay identical across ranks. Every ``checkpoint_every`` steps all ranks
call ``save_checkpoint`` (with the gates' EMA, the history and each rank's generator state as client state)
and upload what they wrote to the store; a restarted search downloads the latest checkpoint and continues
where it stopped. Rank 0 logs to MLflow and publishes the result (``search/<key>/result.json``, the LoRA as
safetensors). Checkpoint files are DeepSpeed's own (torch pickles): they are only ever read back from our
store after their sha256 was verified.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest
from srcompress.models.pruning.masks import tau_at
from srcompress.models.pruning.search import MaskSearch
from srcompress.models.teachers import load_teacher
from srcompress.tasks.common.latents import calibration_subset, center_tile
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import fetch_teacher_folder, load_kwargs
from srcompress.tasks.common.training import StoreCheckpoints, engine_facts, init_rank, perceptual_net
from srcompress.tasks.search.config import SearchConfig
from srcompress.tasks.search.progressive import Rounds


def build(ctx: RunContext, cfg: SearchConfig, teacher_cfg: TeacherConfig, teacher: Manifest,
          fixed_mask: list[float] | None, device: torch.device) -> MaskSearch:
    """A fresh teacher (LoRA is injected in place: never the shared, memoised one) under the mask search."""
    folder = fetch_teacher_folder(ctx.get_store(), teacher, Path(ctx.workdir) / "teachers")
    net = load_teacher(folder, **load_kwargs(teacher_cfg, one_step=True), device=device)
    mask = torch.tensor(fixed_mask) if fixed_mask is not None else None
    return MaskSearch(net, cfg.n, cfg.m, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.init, cfg.scaling,
                      cfg.dynamic, cfg.expansion_corrosion, cfg.ema, mask, cfg.seed).to(device)


def search_loop(config: dict) -> None:
    """Rank entry: ``config`` holds JSON strings only (RunContext, configs, manifests, key, run id, mask)."""
    import deepspeed
    import torch.distributed as dist

    ctx = RunContext.model_validate_json(config["ctx"])
    cfg = SearchConfig.model_validate_json(config["cfg"])
    teacher_cfg = TeacherConfig.model_validate_json(config["teacher_cfg"])
    latents, teacher = Manifest.from_json(config["latents"]), Manifest.from_json(config["teacher"])
    key, run_id, fixed = config["key"], config["run_id"], config["fixed_mask"]
    rank, world, device = init_rank(cfg.device or ctx.device, cfg.num_workers,
                                    "search.device" if cfg.device else "run.device")
    store = ctx.get_store()
    torch.manual_seed(cfg.seed)
    model = build(ctx, cfg, teacher_cfg, teacher, fixed, device)
    data = calibration_subset(store, latents, cfg.calibration_size, cfg.seed)
    if "teacher" not in data:
        raise ValueError("search_pruning needs cached teacher latents (encode.teacher_output: true)")
    tile = getattr(model.teacher, "tile", None)
    lq, target = center_tile(data["lq"][rank::world], tile), center_tile(data["teacher"][rank::world], tile)
    rounds = Rounds(config["pgp"], cfg, model.masker.names) if config.get("pgp") else None
    hq = center_tile(data["hq"][rank::world], tile) if rounds is not None else None
    total = cfg.steps + (rounds.steps if rounds is not None else 0)  # pgp_progressive: its rounds, then steps
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.weight_decay, cfg.gate_lr_mult))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                      config=cfg.deepspeed.engine_config(min(cfg.batch_size, len(lq))))
    perceptual = perceptual_net(device) if cfg.perceptual_weight > 0 else None
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32  # the engine casts the model, not our inputs
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    history: list[dict] = []
    start = 0
    local = Path(tempfile.mkdtemp(prefix=f"search-{key[:8]}-r{rank}-", dir=ctx.scratch("search")))
    try:
        ckpt = StoreCheckpoints(store, f"search/{key[:24]}/checkpoint", local, rank)
        latest = ckpt.restore()
        if latest is not None:
            _, client = engine.load_checkpoint(str(local), tag=latest["tag"])
            start, history = int(client["step"]), list(client["history"])
            model.gates.ema_logits.copy_(client["ema_logits"].to(model.gates.ema_logits.device))
            model.gates.ema_pair_logits.copy_(client["ema_pair_logits"].to(model.gates.ema_pair_logits.device))
            gen.set_state(client["rng"][rank])
            if rounds is not None:  # the mask the rounds had reached
                rounds.records = list(client["rounds"])
                model.fixed_mask.copy_(client["mask"].to(model.fixed_mask))
        tracker = ctx.get_tracker() if rank == 0 else None
        t0 = time.perf_counter()
        for step in range(start, total):
            tau = tau_at(min(step, cfg.steps - 1), cfg.steps, cfg.tau_start, cfg.tau_end)  # (fixed masks: unused)
            idx = torch.randint(len(lq), (min(cfg.batch_size, len(lq)),), generator=gen)
            # bf16 engines cast the weights; autocast casts what diffusers computes in float32 on the way
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.deepspeed.bf16):
                z = engine(lq[idx].to(device=device, dtype=dtype), tau, gen)
            loss = (z.float() - target[idx].to(device)).abs().mean()
            if perceptual is not None:  # ST-LPIPS after decoding, against the decoded teacher latent
                dec = model.teacher.decode
                loss = loss + cfg.perceptual_weight * perceptual(
                    dec(z).float(), dec(target[idx].to(device=device, dtype=dtype)).float().detach(),
                    normalize=True).mean()
            engine.backward(loss)
            engine.step()
            model.gates.update_ema()
            if rounds is not None and rounds.ends_round(step + 1):
                rounds.prune(model, lq, hq, target, rank, dtype, tracker, run_id)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                probs = model.gates.probabilities()
                rec = {"step": step + 1, "loss": float(loss), "tau": tau, "probs": probs.tolist(),
                       "confidence": probs.max(-1).values.tolist()}
                history.append(rec)
                if tracker is not None:
                    tracker.log_metrics(run_id, {"loss": rec["loss"], "tau": tau} | {
                        f"group{g}.confidence": c for g, c in enumerate(rec["confidence"])} | {
                        f"group{g}.option{o}": p for g, row in enumerate(rec["probs"]) for o, p in enumerate(row)},
                        step=step + 1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                rngs = [None] * world
                dist.all_gather_object(rngs, gen.get_state())
                tag = f"step{step + 1}"
                client = {"step": step + 1, "history": history, "ema_logits": model.gates.ema_logits.detach().cpu(),
                          "ema_pair_logits": model.gates.ema_pair_logits.detach().cpu(), "rng": rngs}
                if rounds is not None:
                    client |= {"rounds": rounds.records, "mask": model.fixed_mask.detach().float().cpu()}
                ckpt.save(tag, lambda root: engine.save_checkpoint(str(root), tag=tag, client_state=client))
        train_s = time.perf_counter() - t0  # the loop alone: no start-up (checkpoint saves included when on)
        if rank == 0:
            _publish(store, key, model, cfg, world, history, fixed is not None, teacher.digest,
                     {"train_seconds": train_s, "steps_run": total - start}, engine_facts(engine),
                     rounds.records if rounds is not None else None)
        dist.barrier()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _publish(store, key: str, model: MaskSearch, cfg: SearchConfig, world: int, history: list[dict],
             fixed: bool, teacher_digest: str, timing: dict, engine: dict, rounds: list[dict] | None) -> None:
    mask = model.fixed_mask.float() if fixed else model.gates.final_mask(cfg.decision)
    lora = store.put_bytes(f"search/{key[:24]}/lora.safetensors", save(model.lora_state()) if model.lora_names
                           else save({"empty": torch.zeros(0)}))
    probs = model.gates.probabilities()
    result = {"format": "srcompress.mask.v1", "teacher_digest": teacher_digest, "method": cfg.method,
              "mask": [int(v) for v in mask.tolist()],
              "blocks": model.masker.names, "kept": [n for n, v in zip(model.masker.names, mask.tolist()) if v > 0.5],
              "options": model.gates.options.int().tolist(), "ema_logits": model.gates.ema_logits.tolist(),
              "probabilities": probs.tolist(), "confidence": probs.max(-1).values.tolist(),
              "decision": cfg.decision, "pair_probabilities": model.gates.pair_probabilities().tolist(),
              "group_mask": [int(v) for v in model.gates.final_mask("group").tolist()],
              "lora": {"key": lora.key, "sha256": lora.sha256, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                       "targets": cfg.lora_targets},
              "deepspeed": cfg.deepspeed.engine_config(cfg.batch_size), "engine": engine, "world_size": world,
              "history": history, "steps": cfg.steps}
    if rounds is not None:  # pgp_progressive: every round, coarse first (docs/methods.md §7.3)
        result |= {"rounds": rounds, "round_steps": cfg.pgp.round_steps}
    # Wall-clock figures live beside the result, not in it: the result's digest is the mask's identity and
    # must not change from run to run (timings do).
    store.put_bytes(f"search/{key[:24]}/timing.json", json.dumps(timing).encode())
    store.put_bytes(f"search/{key[:24]}/result.json", json.dumps(result, indent=1).encode())
