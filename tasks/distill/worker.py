"""One DeepSpeed rank of a distillation stage (run by ``infra/ray_cluster.py: train_on_ray``), docs/methods.md §9.

Stage 1 (latent): the student built from the mask regresses the cached teacher latent (L1, optional ST-LPIPS
after decoding). Stage 2 (pixel): starting from stage 1, decode (the tiny VAE, fitted first, when enabled) and
train with ``l1_weight``·L1 + ``perceptual_weight``·ST-LPIPS(HQ) + ``gan_weight``·hinge GAN; generator and
discriminator are two DeepSpeed engines. Every rank trains on its slice of the seeded training set
(``rank::world``) with its own seeded generator; gradients are averaged by the engines. Checkpoints (both
engines, the history, every rank's generator state) go to the store every ``checkpoint_every`` steps and a
restarted stage resumes from the latest. Rank 0 logs to MLflow and publishes the student folder and a grid.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest
from srcompress.models.student.gan import d_hinge, g_hinge, make_discriminator
from srcompress.models.student.tiny_vae import train_tiny_vae
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import fetch_teacher_folder
from srcompress.tasks.common.training import StoreCheckpoints, engine_facts, init_rank, perceptual_net
from srcompress.tasks.distill.build import (comparison_grid, configured_tiny_vae, publish_student, published_student, stage1_student,
                                            teacher_on)
from srcompress.tasks.distill.config import DistillConfig
from srcompress.tasks.distill.data import random_tiles, training_set


class Generator(nn.Module):
    """The engine's module: one student step in latent space (decoding happens outside, on the same params)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, z_lq: torch.Tensor) -> torch.Tensor:
        return self.student.restore_tile(z_lq)


def cosine_warmup(opt, steps: int, warmup: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def distill_loop(config: dict) -> None:
    """Rank entry: ``config`` holds JSON strings only (RunContext, configs, manifests, key, run id, stage)."""
    import deepspeed
    import torch.distributed as dist

    ctx = RunContext.model_validate_json(config["ctx"])
    cfg = DistillConfig.model_validate_json(config["cfg"])
    teacher_cfg = TeacherConfig.model_validate_json(config["teacher_cfg"])
    m = {k: Manifest.from_json(v) for k, v in config["manifests"].items()}
    stage, key, run_id, phase = config["stage"], config["key"], config["run_id"], config["phase_adapter"]
    rank, world, device = init_rank(cfg.device or ctx.device, cfg.num_workers,
                                    "distill.device" if cfg.device else "run.device")
    store = ctx.get_store()
    torch.manual_seed(cfg.seed)
    if stage == "stage1":
        student = stage1_student(ctx, cfg, teacher_cfg, m["teacher"], m["mask"], phase, device)
    else:
        student = published_student(ctx, m["stage1"], device)
    data = training_set(store, m["latents"], m["pairs"], cfg.train_size, cfg.seed, pixels=True)
    mine = {k: v[rank::world] for k, v in data.items()}
    prefix = f"distill/{key[:24]}/{stage}"
    local = Path(tempfile.mkdtemp(prefix=f"distill-{key[:8]}-r{rank}-", dir=ctx.scratch("distill")))
    ckpt = StoreCheckpoints(store, f"{prefix}/checkpoint", local, rank)
    try:
        latest = ckpt.restore()
        vae_stats: dict = {}
        if stage == "stage2" and "vae" in m and not student.compressed_vae:
            # the compress_vae step's VAE; a resumed stage then overwrites its decoder from the checkpoint
            student.vae = compressed_vae(ctx, m["vae"], device)
        elif stage == "stage2" and cfg.tiny_vae.enabled and not student.tiny_vae and latest is None:
            vae_stats = fit_tiny_vae(ctx, cfg, teacher_cfg, m["teacher"], student, data, rank, device)
        elif stage == "stage2" and cfg.tiny_vae.enabled and not student.tiny_vae:
            student.vae = configured_tiny_vae(student, cfg).to(device)  # weights come from the checkpoint
        t0 = time.perf_counter()
        trainer = Stage1 if stage == "stage1" else Stage2
        run = trainer(ctx, cfg, student, mine, device, rank, world, deepspeed, latest, ckpt, run_id)
        history = run.train()
        train_s = time.perf_counter() - t0
        if rank == 0:
            student.eval().requires_grad_(False)
            out = publish_student(store, student, f"{prefix}/student", {"stage": stage, "key": key},
                                  ctx.scratch("distill"))
            grid = store.put_bytes(f"{prefix}/grid.png", comparison_grid(student, data, student.tile))
            result = {"format": "srcompress.distill.v1", "stage": stage, "student": out, "history": history,
                      "grid": {"key": grid.key, "sha256": grid.sha256}, "world_size": world,
                      "train_seconds": train_s, "steps_run": run.steps_run, "phase_adapter": phase,
                      "deepspeed": cfg.deepspeed.engine_config(run.micro_batch), "describe": student.describe(),
                      "tiny_vae_fit": vae_stats, "engines": run.engine_facts}
            store.put_bytes(f"{prefix}/result.json", json.dumps(result, indent=1, default=str).encode())
        dist.barrier()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def fit_tiny_vae(ctx, cfg: DistillConfig, teacher_cfg, teacher_m, student, data, rank: int, device) -> dict:
    """Rank 0 fits the tiny VAE to the teacher's VAE (on HQ crops and decoded LQ latents), then broadcasts it."""
    import torch.distributed as dist

    tv = cfg.tiny_vae
    vae = configured_tiny_vae(student, cfg).to(device)
    if rank == 0:
        teacher = teacher_on(ctx, teacher_cfg, teacher_m, device)
        with torch.no_grad():
            lq_pix = torch.cat([teacher.decode(z.to(device)) for z in data["lq"].split(8)])
        images = torch.cat([data["hq"].float().to(device) / 255, lq_pix])
        stats = train_tiny_vae(vae, teacher, images, tv.steps, tv.lr, tv.batch_size, tv.crop, cfg.seed)
        del teacher
    for p in vae.parameters():
        dist.broadcast(p.data, 0)
    student.vae = vae.eval().requires_grad_(False)
    return stats if rank == 0 else {}


def compressed_vae(ctx, vae_m: Manifest, device) -> torch.nn.Module:
    """The compress_vae step's model, downloaded and verified (tasks/vae/step.py)."""
    from srcompress.models.student.vae_prune import PrunedAutoencoderKL

    folder = fetch_teacher_folder(ctx.get_store(), vae_m, Path(ctx.workdir) / "vaes")
    vae = PrunedAutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, use_safetensors=True)
    return vae.to(device).eval().requires_grad_(False)


class _Stage:
    def __init__(self, ctx, cfg: DistillConfig, student, data, device, rank, world, deepspeed, latest, ckpt,
                 run_id):
        self.ctx, self.cfg, self.student, self.data, self.device = ctx, cfg, student, data, device
        self.rank, self.world, self.ds, self.latest, self.ckpt, self.run_id = rank, world, deepspeed, latest, ckpt, run_id
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + (7 if isinstance(self, Stage2) else 0))
        self.tracker = ctx.get_tracker() if rank == 0 else None
        self.dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
        self.history: list[dict] = []
        self.engine_facts: dict[str, dict] = {}  # per engine, read back from it after training (not our config)
        self.steps_run = 0
        self.micro_batch = 1

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.deepspeed.bf16)

    def batch(self, n: int):
        idx = torch.randint(len(self.data["lq"]), (min(n, len(self.data["lq"])),), generator=self.gen)
        z_lq, z_t, hq = random_tiles(self.data, idx, self.student.tile, self.student.latent_factor, self.gen)
        return z_lq.to(self.device, self.dtype), z_t.to(self.device), None if hq is None else hq.to(self.device)

    def log(self, step: int, total: int, values: dict, name: str) -> None:
        if (step + 1) % self.cfg.log_every and step + 1 != total:
            return
        rec = {"step": step + 1, **values}
        self.history.append(rec)
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, {f"{name}.{k}": v for k, v in values.items()}, step=step + 1)

    def checkpoint(self, step: int, total: int, engines: dict) -> None:
        import torch.distributed as dist

        if not self.cfg.checkpoint_every or (step + 1) % self.cfg.checkpoint_every or step + 1 >= total:
            return
        rngs: list = [None] * self.world
        dist.all_gather_object(rngs, self.gen.get_state())
        tag = f"step{step + 1}"
        client = {"step": step + 1, "history": self.history, "rng": rngs}

        def write(root: Path) -> None:
            for name, engine in engines.items():
                engine.save_checkpoint(str(root / name), tag=tag, client_state=client)
        self.ckpt.save(tag, write)

    def resume(self, engines: dict) -> int:
        if self.latest is None:
            return 0
        client = {}
        for name, engine in engines.items():
            _, client = engine.load_checkpoint(str(self.ckpt.local / name), tag=self.latest["tag"])
        self.history = list(client["history"])
        self.gen.set_state(client["rng"][self.rank])
        return int(client["step"])


class Stage1(_Stage):
    def train(self) -> list[dict]:
        cfg, s1 = self.cfg, self.cfg.stage1
        self.micro_batch = min(s1.batch_size, len(self.data["lq"]))
        if s1.steps == 0:
            return []
        self.student.backbone.requires_grad_(True)
        if self.student.phase is not None:
            self.student.phase.requires_grad_(True)
        gen_model = Generator(self.student)
        params = [p for p in gen_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, s1.lr, weight_decay=0.0)
        engine, *_ = self.ds.initialize(model=gen_model, optimizer=opt, lr_scheduler=cosine_warmup(opt, s1.steps, s1.warmup),
                                        config=cfg.deepspeed.engine_config(self.micro_batch))
        lp = perceptual_net(self.device) if s1.perceptual_weight > 0 else None
        start = self.resume({"g": engine})
        gen_model.train()
        for step in range(start, s1.steps):
            z_lq, z_t, _ = self.batch(s1.batch_size)
            with self.autocast():
                z = engine(z_lq)
            l1 = (z.float() - z_t).abs().mean()
            loss = l1
            if lp is not None:
                dec = self.student.decode
                loss = loss + s1.perceptual_weight * lp(dec(z).float(), dec(z_t.to(z.dtype)).float().detach(),
                                                        normalize=True).mean()
            engine.backward(loss)
            engine.step()
            self.steps_run += 1
            self.log(step, s1.steps, {"loss": float(loss), "l1": float(l1), "lr": engine.get_lr()[0]}, "stage1")
            self.checkpoint(step, s1.steps, {"g": engine})
        self.engine_facts = {"g": engine_facts(engine)}
        return self.history


class Stage2(_Stage):
    def train(self) -> list[dict]:
        cfg, s2 = self.cfg, self.cfg.stage2
        self.micro_batch = min(s2.batch_size, len(self.data["lq"]))
        if s2.steps == 0:
            return []
        st = self.student
        st.backbone.requires_grad_(True)
        if st.phase is not None:
            st.phase.requires_grad_(True)
        if (st.tiny_vae or st.compressed_vae) and s2.train_decoder:  # the decoder is the generator's last stage
            st.vae.decoder.requires_grad_(True)
        gen_model = Generator(st)
        g_opt = torch.optim.AdamW([p for p in gen_model.parameters() if p.requires_grad], s2.lr, weight_decay=0.0)
        ds_cfg = cfg.deepspeed.engine_config(self.micro_batch)
        g_engine, *_ = self.ds.initialize(model=gen_model, optimizer=g_opt, config=ds_cfg)
        engines = {"g": g_engine}
        lp = perceptual_net(self.device) if s2.perceptual_weight > 0 else None
        d = d_engine = None
        if s2.gan_weight > 0:
            torch.manual_seed(cfg.seed + 1)
            d = make_discriminator(s2.discriminator, perceptual_net(self.device) if s2.discriminator ==
                                   "projected_stlpips" else None).to(self.device)
            d_params = [p for p in d.parameters() if p.requires_grad]
            d_opt = torch.optim.AdamW(d_params, s2.d_lr, betas=(0.0, 0.99), weight_decay=0.0)
            d_engine, *_ = self.ds.initialize(model=d, optimizer=d_opt, config=ds_cfg)
            engines["d"] = d_engine
        start = self.resume(engines)
        gen_model.train()
        for step in range(start, s2.steps):
            z_lq, z_t, hq = self.batch(s2.batch_size)
            use_gan = d is not None and step >= s2.gan_start
            with self.autocast():
                z = g_engine(z_lq)
                x = st.decode(z).float()
            l1 = (z.float() - z_t).abs().mean() if s2.l1_target == "teacher_latent" else (x - hq).abs().mean()
            loss = s2.l1_weight * l1
            rec = {"l1": float(l1)}
            if lp is not None:
                p_loss = lp(x, hq, normalize=True).mean()
                loss = loss + s2.perceptual_weight * p_loss
                rec["perceptual"] = float(p_loss)
            if use_gan:
                for p in d_params:  # D's weights get no gradient from the generator's loss
                    p.requires_grad_(False)
                adv = g_hinge(d(x))
                for p in d_params:
                    p.requires_grad_(True)
                loss = loss + s2.gan_weight * adv
                rec["g_adv"] = float(adv)
            g_engine.backward(loss)
            g_engine.step()
            if d_engine is not None:
                logits = d_engine(torch.cat([hq, x.detach()]))
                n = hq.shape[0]
                d_loss = d_hinge([lg[:n] for lg in logits], [lg[n:] for lg in logits])
                d_engine.backward(d_loss)
                d_engine.step()
                rec["d_loss"] = float(d_loss)
            self.steps_run += 1
            self.log(step, s2.steps, {"loss": float(loss), **rec}, "stage2")
            self.checkpoint(step, s2.steps, engines)
        self.engine_facts = {name: engine_facts(e) for name, e in engines.items()}
        if d is not None:
            frozen = sum(p.numel() for p in d.parameters() if not p.requires_grad)
            self.engine_facts["d"] |= {"discriminator": type(d).__name__, "frozen_params": frozen,
                                       "trainable_params": sum(p.numel() for p in d_params)}
        return self.history
