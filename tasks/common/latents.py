"""Read the latent cache an ``encode_latents`` manifest points at (what the search and distillation train on).

Each latent shard holds ``lq``, ``hq`` and (optionally) ``teacher`` latents, (N, C, h, w), plus per-pair metadata;
every read is verified against the digest the index records.
"""

from __future__ import annotations

import torch
from safetensors.torch import load

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore
from srcompress.tasks.common.pairs import ShardRef, index_shards


def latent_shards(store: ArtifactStore, manifest: Manifest) -> list[ShardRef]:
    return index_shards(store, manifest, "latents")


def read_latents(store: ArtifactStore, shard: ShardRef) -> dict[str, torch.Tensor]:
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


def center_tile(z: torch.Tensor, tile: int | None) -> torch.Tensor:
    """The centre ``tile``×``tile`` latent crop (a bounded positional embedding sees one tile at a time, as
    inference tiles); the whole latent when ``tile`` is None."""
    if not tile:
        return z
    h, w = z.shape[-2:]
    top, left = max(0, (h - tile) // 2), max(0, (w - tile) // 2)
    return z[..., top : top + tile, left : left + tile]
