"""Read the latent cache an ``encode_latents`` manifest points at (what the search and distillation train on).

Each latent shard holds ``lq``, ``hq`` and (optionally) ``teacher`` latents, (N, C, h, w), plus per-pair metadata;
every read is verified against the digest the index records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore


@dataclass(frozen=True)
class LatentShard:
    index: int
    key: str
    sha256: str
    count: int


def latent_shards(store: ArtifactStore, manifest: Manifest) -> list[LatentShard]:
    if manifest.kind != "latents":
        raise ValueError(f"expected a latents manifest, got {manifest.kind!r}")
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    return [LatentShard(i, s["key"], s["sha256"], s["count"]) for i, s in enumerate(index["shards"])]


def read_latents(store: ArtifactStore, shard: LatentShard) -> dict[str, torch.Tensor]:
    """``lq``, ``hq`` [, ``teacher``] as float32 tensors (the cache may store float16 / bfloat16)."""
    return {k: v.float() for k, v in load(store.get_bytes(shard.key, expected_sha256=shard.sha256)).items()}


def calibration_subset(store: ArtifactStore, manifest: Manifest, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``size`` pairs drawn without replacement by a seeded permutation over the whole cache (all if fewer);
    the same (cache, size, seed) always gives the same pairs, in the same order."""
    shards = latent_shards(store, manifest)
    refs = [(s, i) for s in shards for i in range(s.count)]
    order = torch.randperm(len(refs), generator=torch.Generator().manual_seed(seed))[: min(size, len(refs))]
    picked = [refs[int(i)] for i in order]
    out: dict[str, list[torch.Tensor]] = {}
    for shard in sorted({s for s, _ in picked}, key=lambda s: s.index):
        tensors = read_latents(store, shard)
        for (s, i), pos in zip(picked, range(len(picked))):
            if s == shard:
                for k, v in tensors.items():
                    out.setdefault(k, [None] * len(picked))[pos] = v[i]
    return {k: torch.stack(v) for k, v in out.items()}
