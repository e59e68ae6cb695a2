"""Scan sources, plan shards, and compute one shard of LQ/HQ pairs.

A shard is the unit of fan-out, caching and resume. Its object key is derived from its own cache key
(hash of the step config, the (source digest, crop index) of each pair, and the code version), so a shard
is reused by any later run that would compute the same pairs — and a deleted shard is the only one redone.

Shard format: one safetensors file, ``lq`` uint8 (N, 3, h, w), ``hq`` uint8 (N, 3, H, W), and one metadata
key ``srcompress`` (JSON: format, scale, config hash, and per pair the source name/digest, crop index and box,
flip, seed and the drawn degradation parameters).
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from srcompress.infra.store import StoreConfig, sha256_bytes
from srcompress.tasks.degrade.config import DegradeConfig
from srcompress.tasks.common.pairs import pair_seed
from srcompress.tasks.common.ingest import BadImage, check_size, decode_image
from srcompress.tasks.common.sources import DataConfig, SourceRef, read_source

if TYPE_CHECKING:  # torch and the degradation kernels load in compute_shard: scanning and planning need neither
    import torch

    from srcompress.models.degradations import SampleParams


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceRecord(_Model):
    name: str
    origin: str
    location: str
    digest: str
    width: int
    height: int
    conversions: list[str] = []


class Quarantined(_Model):
    name: str
    digest: str | None
    reason: str
    copied_to: str | None = None


class PairItem(_Model):
    source: SourceRecord
    crop_index: int


class ShardSpec(_Model):
    index: int
    items: list[PairItem]
    cache_key: str

    @property
    def object_key(self) -> str:
        return f"degrade/shards/{self.cache_key}.safetensors"


class ShardResult(_Model):
    index: int
    key: str
    uri: str
    sha256: str
    count: int
    computed: bool
    seconds: float = 0.0
    worker: str = ""  # "<node id>/<pid>" when a Ray task computed it (run.ray_address)


def scan_one(ref: SourceRef, data_cfg: DataConfig, store_cfg: StoreConfig,
             crop_size: int) -> tuple[SourceRecord | None, Quarantined | None, bytes]:
    """Read, hash and validate one file. Returns (record, None, data) or (None, quarantine, data)."""
    if ref.size > data_cfg.max_file_mb * 2**20:
        return None, Quarantined(name=ref.name, digest=None,
                                 reason=f"file is {ref.size / 2**20:.1f} MiB > data.max_file_mb"), b""
    try:
        data = read_source(ref, data_cfg, store_cfg)
    except OSError as exc:
        return None, Quarantined(name=ref.name, digest=None, reason=f"unreadable: {exc}"), b""
    digest = sha256_bytes(data)
    try:
        dec = decode_image(data, data_cfg.max_pixels)
        check_size(dec, crop_size)
    except BadImage as exc:
        return None, Quarantined(name=ref.name, digest=digest, reason=str(exc)), data
    h, w = dec.rgb.shape[:2]
    return SourceRecord(name=ref.name, origin=ref.origin, location=ref.location, digest=digest, width=w, height=h,
                        conversions=dec.conversions), None, data


def plan_shards(records: list[SourceRecord], cfg: DegradeConfig, shard_key) -> list[ShardSpec]:
    """Pairs ordered by (source digest, crop index), cut into shards of ``cfg.shard_size``."""
    items = [PairItem(source=r, crop_index=c) for r in sorted(records, key=lambda r: (r.digest, r.name))
             for c in range(cfg.crops_per_image)]
    shards = []
    for i in range(0, len(items), cfg.shard_size):
        chunk = items[i : i + cfg.shard_size]
        key = shard_key({f"{j:05d}": f"{it.source.digest}:{it.crop_index}" for j, it in enumerate(chunk)})
        shards.append(ShardSpec(index=len(shards), items=chunk, cache_key=key))
    return shards


def _crop(rgb: np.ndarray, item: PairItem, cfg: DegradeConfig) -> tuple[torch.Tensor, dict]:
    rng = np.random.default_rng(pair_seed(cfg.seed, item.source.digest, item.crop_index, "crop"))
    h, w = rgb.shape[:2]
    top = int(rng.integers(0, h - cfg.crop_size + 1))
    left = int(rng.integers(0, w - cfg.crop_size + 1))
    flip = bool(cfg.use_hflip and rng.uniform() < 0.5)
    patch = rgb[top : top + cfg.crop_size, left : left + cfg.crop_size]
    if flip:
        patch = patch[:, ::-1]
    import torch

    t = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float() / 255.0
    return t, {"box": [left, top, cfg.crop_size, cfg.crop_size], "hflip": flip}


def _describe(p: SampleParams) -> dict:
    return {"k1": p.kernel1_type, "k2": p.kernel2_type if p.blur2 else None,
            "resize1": [p.resize1.kind, round(p.resize1.scale, 4), p.resize1.mode],
            "noise1": ["gaussian" if p.noise1.gaussian else "poisson", round(p.noise1.amount, 4), p.noise1.gray],
            "jpeg1": round(p.jpeg1, 2),
            "resize2": [p.resize2.kind, round(p.resize2.scale, 4), p.resize2.mode],
            "noise2": ["gaussian" if p.noise2.gaussian else "poisson", round(p.noise2.amount, 4), p.noise2.gray],
            "final_order": "resize-sinc-jpeg" if p.order_a else "jpeg-resize-sinc", "jpeg2": round(p.jpeg2, 2),
            "sinc": bool(np.count_nonzero(p.sinc) > 1)}


def compute_shard(spec: ShardSpec, data_cfg: DataConfig, cfg: DegradeConfig, store_cfg: StoreConfig,
                  out_path: Path) -> int:
    """Degrade every pair of the shard and write the safetensors file to ``out_path``. Returns #pairs."""
    import torch
    from safetensors.torch import save_file

    from srcompress.models.degradations import degrade_batch
    from srcompress.models.degradations.ops import to_uint8

    decoded: dict[str, np.ndarray] = {}
    crops, meta, seeds = [], [], []
    for item in spec.items:
        src = item.source
        if src.digest not in decoded:
            ref = SourceRef(src.name, src.origin, src.location, 0)  # type: ignore[arg-type]
            data = read_source(ref, data_cfg, store_cfg)
            if sha256_bytes(data) != src.digest:
                raise RuntimeError(f"source {src.name} changed since it was scanned; rerun the pipeline")
            decoded[src.digest] = decode_image(data, data_cfg.max_pixels).rgb
        crop, info = _crop(decoded[src.digest], item, cfg)
        seed = pair_seed(cfg.seed, src.digest, item.crop_index, "degrade")
        crops.append(crop)
        seeds.append(seed)
        meta.append({"name": src.name, "digest": src.digest, "crop_index": item.crop_index, "seed": str(seed),
                     "conversions": src.conversions, **info})
    lqs, hqs = [], []
    for i in range(0, len(crops), cfg.batch_size):
        lq, hq, params = degrade_batch(torch.stack(crops[i : i + cfg.batch_size]), seeds[i : i + cfg.batch_size], cfg)
        lqs.append(to_uint8(lq))
        hqs.append(to_uint8(hq))
        for j, p in enumerate(params):
            meta[i + j]["degradation"] = _describe(p)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key: safetensors writes its metadata map in hash order, so several keys would make the
    # bytes (and the shard digest) differ between identical runs.
    header = {"format": "srcompress.pairs.v1", "scale": cfg.scale, "config_hash": cfg.config_hash(), "pairs": meta}
    save_file({"lq": torch.cat(lqs).contiguous(), "hq": torch.cat(hqs).contiguous()}, str(out_path),
              metadata={"srcompress": json.dumps(header, sort_keys=True)})
    return len(crops)
