"""What every DeepSpeed training step shares (search, distillation): the engine config, rank setup, the frozen
perceptual network, and checkpoints kept in the artifact store so a killed run resumes on any machine.

    rank, world, device = init_rank(cfg.device or ctx.device, num_workers)     # inside a training rank
    ckpt = StoreCheckpoints(store, "distill/<key>/stage1/checkpoint", scratch_dir, rank)
    state = ckpt.restore()                 # None, or {"tag": …}: the local dir now holds that checkpoint
    ckpt.save(tag, lambda root: engine.save_checkpoint(str(root / "g"), tag=tag, client_state=…))

Checkpoint files are DeepSpeed's own (torch pickles): they are only read back from our store after their
sha256 was verified against ``latest.json``, which rank 0 writes last (so a half-uploaded checkpoint is never
the latest). Every rank uploads what it wrote itself, and the listing is the union over ranks.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydantic import Field

from srcompress.infra.config import StrictModel
from srcompress.models.device import resolve_device

if TYPE_CHECKING:  # configs import this module (DeepSpeedConfig): torch loads where training starts
    import torch


class DeepSpeedConfig(StrictModel):
    """The DeepSpeed engine (``deepspeed.initialize``); the optimiser is ours (param groups), not the config's."""

    zero_stage: int = Field(1, ge=0, le=2, description="ZeRO stage (0: plain DDP-style, 1: optimiser states, 2: + gradients).")
    bf16: bool = Field(False, description="bf16 mixed precision.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    gradient_clipping: float = Field(1.0, ge=0, description="Global gradient-norm clip (0 = off).")

    def engine_config(self, micro_batch: int) -> dict:
        return {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": self.gradient_accumulation,
                "gradient_clipping": self.gradient_clipping, "zero_optimization": {"stage": self.zero_stage},
                "bf16": {"enabled": self.bf16}, "steps_per_print": 10**9, "wall_clock_breakdown": False}


def init_rank(device_spec: str | None, num_workers: int, what: str = "run.device") -> tuple[int, int, torch.device]:
    """Inside a training rank (``train_on_ray``): threads per rank, the device, and DeepSpeed's process group."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from srcompress.tasks.common.threads import core_budget

    torch.set_num_threads(max(1, core_budget() // num_workers))
    device = resolve_device(device_spec, what)
    if device.type != "cuda":
        # DeepSpeed's CPU backend JIT-builds a shared-memory all-reduce op in every rank (deepspeed/comm/torch.py,
        # build_shm_op) that only its inference_all_reduce uses; training's collectives go through gloo. The build
        # is ~35 s of gcc per fresh venv (measured on a clean clone) and a ninja check in each rank after that.
        # (import_module: `import deepspeed.comm.torch as m` binds the torch that deepspeed.comm imported)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def perceptual_net(device: torch.device, net: str = "alex") -> torch.nn.Module:
    """The frozen ST-LPIPS network (weights from the stlpips-pytorch wheel, checked key by key)."""
    from srcompress.models.iqa import MetricEnv
    from srcompress.models.iqa.stlpips import STLPIPS

    return STLPIPS(MetricEnv(device=str(device), st_lpips_net=net)).model.requires_grad_(False)


class StoreCheckpoints:
    """DeepSpeed checkpoints of one training run under ``prefix`` in the artifact store."""

    def __init__(self, store, prefix: str, local: Path, rank: int):
        self.store, self.prefix, self.local, self.rank = store, prefix.rstrip("/"), Path(local), rank

    def restore(self) -> dict | None:
        """Download the latest complete checkpoint into the local dir; None when there is none (or unreadable)."""
        try:
            latest = json.loads(self.store.get_bytes(f"{self.prefix}/latest.json"))
        except Exception:  # absent or unreadable: start from scratch
            return None
        for rel, sha in latest["files"].items():
            self.store.get_file(f"{self.prefix}/{rel}", self.local / rel, expected_sha256=sha)
        return latest

    def save(self, tag: str, write: Callable[[Path], None], extra: dict | None = None) -> None:
        """Collective: every rank calls ``write(local_dir)`` (DeepSpeed's ``save_checkpoint(dir, tag)``), uploads
        the files it wrote under a ``<tag>/`` directory, then rank 0 publishes ``latest.json`` (the union)."""
        import torch.distributed as dist

        write(self.local)
        dist.barrier()
        mine = {}
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            if tag in rel.split("/")[:-1]:
                mine[rel] = self.store.put_file(f"{self.prefix}/{rel}", path).sha256
        listings: list = [None] * dist.get_world_size()
        dist.all_gather_object(listings, mine)
        if self.rank == 0:
            files = {k: v for listing in listings for k, v in listing.items()}
            self.store.put_bytes(f"{self.prefix}/latest.json",
                                 json.dumps({"tag": tag, "files": files, **(extra or {})}, sort_keys=True).encode())
        dist.barrier()


def engine_facts(engine) -> dict:
    """What the DeepSpeed engine actually ran with, read back from it (not from our config): ZeRO stage, bf16,
    micro-steps per optimizer step, optimizer steps taken, the trainable weights' dtype and the optimizer class
    (a ZeRO stage wraps it)."""
    trainable = next(p for p in engine.module.parameters() if p.requires_grad)
    return {"zero_stage": int(engine.zero_optimization_stage()), "bf16": bool(engine.bfloat16_enabled()),
            "gradient_accumulation_steps": int(engine.gradient_accumulation_steps()),
            "optimizer_steps": int(engine.global_steps), "param_dtype": str(trainable.dtype).removeprefix("torch."),
            "optimizer": type(engine.optimizer).__name__}
