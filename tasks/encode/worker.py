"""Encode one pairs shard into one latent shard; the Ray Data actor that does it for the step.

Latent shard (safetensors): ``lq`` (N, C, h, w) = E(LQ at HQ size), ``hq`` = E(HQ), ``teacher`` = the teacher's
one-step restoration of ``lq`` — everything stage-1 distillation and the pruning search need, so neither
needs the VAE encoder nor a teacher forward again (TinySR 3p ``data/pre_tea_data.py``). One metadata key
``srcompress`` carries the pair list and the latent convention.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, canonical_hash
from srcompress.models.device import resolve_device
from srcompress.models.metrics import bicubic_to
from srcompress.models.teachers import OneStepTeacher
from srcompress.tasks.common.pairs import ShardRef, pair_seed, read_shard
from srcompress.tasks.encode.config import EncodeConfig
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import materialize_teacher

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def latent_key(shard_sha: str, teacher_digest: str, cfg_hash: str, code_ver: str) -> str:
    return f"encode/shards/{canonical_hash([shard_sha, teacher_digest, cfg_hash, code_ver])}.safetensors"


@torch.no_grad()
def encode_pairs(teacher: OneStepTeacher, lq: torch.Tensor, hq: torch.Tensor, meta: list[dict],
                 cfg: EncodeConfig) -> dict[str, torch.Tensor]:
    """uint8 pairs → latents. LQ is brought to HQ size by bicubic first (the teacher's input convention)."""
    out: dict[str, list[torch.Tensor]] = {"lq": [], "hq": [], "teacher": [], "teacher_steps": []}
    sample = teacher.convention.mode == "sample"
    for i in range(0, len(hq), cfg.batch_size):
        h = hq[i : i + cfg.batch_size].float() / 255
        lo = bicubic_to(lq[i : i + cfg.batch_size].float() / 255, h.shape[-2:])
        rows = meta[i : i + cfg.batch_size]
        gens = {
            part: [torch.Generator().manual_seed(pair_seed(cfg.seed, m["digest"], m["crop_index"], f"latent-{part}")
                                                  & ((1 << 63) - 1)) for m in rows]
            for part in ("lq", "hq")
        } if sample else {"lq": None, "hq": None}
        z_l = teacher.encode(lo, gens["lq"])
        out["lq"].append(z_l)
        out["hq"].append(teacher.encode(h, gens["hq"]))
        if cfg.teacher_output:
            out["teacher"].append(teacher.restore_latent(z_l))
            if getattr(teacher, "last_steps", None) is not None:  # adaptive: UNet steps per region, per pair
                out["teacher_steps"].append(teacher.last_steps.to(torch.int32))
    dt = DTYPES[cfg.dtype]
    return {k: torch.cat(v).to(device="cpu", dtype=torch.int32 if k == "teacher_steps" else dt).contiguous()
            for k, v in out.items() if v}


def write_latent_shard(path: Path, tensors: dict[str, torch.Tensor], meta: list[dict], header: dict) -> None:
    # One metadata key keeps the file bytes deterministic (see tasks/degrade/shards.py).
    save_file(tensors, str(path), metadata={"srcompress": json.dumps({**header, "pairs": meta}, sort_keys=True)})


def actor_device(cfg: EncodeConfig, run_device: str) -> torch.device:
    """encode.device if set; cuda when Ray granted the actor GPUs (it masks CUDA_VISIBLE_DEVICES); else run.device."""
    if cfg.device:
        return resolve_device(cfg.device, "encode.device")
    if cfg.gpus_per_actor > 0:
        return resolve_device("cuda", "encode.gpus_per_actor")
    return resolve_device(run_device, "run.device")


class EncoderActor:
    """Ray Data callable class: loads the teacher once, then encodes one pairs shard per input row.

    Rows carry only shard references; tensors never travel through Ray's object store.
    """

    def __init__(self, ctx_json: str, teacher_manifest_json: str, teacher_cfg_json: str, cfg_json: str,
                 code_ver: str, config_hash: str, regressor_manifest_json: str | None = None):
        self.ctx = RunContext.model_validate_json(ctx_json)
        self.cfg = EncodeConfig.model_validate_json(cfg_json)
        torch.set_num_threads(self.cfg.threads_per_actor)
        self.teacher_manifest = Manifest.from_json(teacher_manifest_json)
        self.store = self.ctx.get_store()
        teacher_cfg = TeacherConfig.model_validate_json(teacher_cfg_json)
        self.device = actor_device(self.cfg, self.ctx.device)
        self.teacher = materialize_teacher(self.store, self.teacher_manifest, teacher_cfg,
                                           Path(self.ctx.workdir) / "scratch" / "teachers-cache", self.device)
        self.code_ver, self.config_hash = code_ver, config_hash
        self.source_digest = self.teacher_manifest.digest  # what produced the teacher outputs
        if regressor_manifest_json is not None:  # encode.teacher_steps: adaptive (AdaDiffSR's sampler)
            from srcompress.tasks.common.adaptive import adaptive_teacher

            regressor = Manifest.from_json(regressor_manifest_json)
            self.teacher = adaptive_teacher(self.store, self.teacher, regressor)
            self.source_digest = canonical_hash([self.teacher_manifest.digest, regressor.digest])
        self.header = {"format": "srcompress.latents.v1", "teacher_digest": self.teacher_manifest.digest,
                       "teacher_steps": "adaptive" if regressor_manifest_json else "fixed",
                       "convention": self.teacher.convention.as_dict(), "dtype": self.cfg.dtype,
                       "seed": self.cfg.seed, "lq_upsample": teacher_cfg.lq_upsample}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"index": [], "key": [], "sha256": [], "count": [], "computed": [], "seconds": [],
                                "convention": []}
        for idx, key, sha, count in zip(batch["index"], batch["key"], batch["sha256"], batch["count"]):
            t0 = time.perf_counter()
            target = latent_key(str(sha), self.source_digest, self.config_hash, self.code_ver)
            info = self.store.verify(target)  # content-checked: a corrupted shard is recomputed
            computed = info is None
            if computed:  # resume: a shard already in the store is never redone
                lq, hq, meta = read_shard(self.store, ShardRef(int(idx), str(key), str(sha), int(count)))
                tensors = encode_pairs(self.teacher, lq.to(self.device), hq.to(self.device), meta, self.cfg)
                tmp = self.ctx.scratch("encode") / f"{Path(target).stem}.{os.getpid()}.{time.monotonic_ns()}.tmp"
                try:
                    write_latent_shard(tmp, tensors, meta, {**self.header, "pairs_shard_sha256": str(sha)})
                    info = self.store.put_file(target, tmp)
                finally:
                    tmp.unlink(missing_ok=True)
            out["index"].append(int(idx))
            out["key"].append(info.key)
            out["sha256"].append(info.sha256)
            out["count"].append(int(count))
            out["computed"].append(computed)
            out["seconds"].append(time.perf_counter() - t0)
            out["convention"].append(json.dumps(self.header["convention"], sort_keys=True))
        return {k: np.asarray(v) for k, v in out.items()}
