"""The distillation training set: cached latents (LQ, teacher output) and, for stage 2, the HQ pixels of the
same pairs (latent shard i was encoded from pairs shard i; both are verified on read).

    data = training_set(store, latents, pairs, size=96, seed=0, pixels=True)
    z_lq, z_t, hq = random_tiles(data, idx, tile=32, factor=1, generator=g)
"""

from __future__ import annotations

import torch

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore
from srcompress.tasks.common.latents import latent_shards, read_latents
from srcompress.tasks.common.pairs import read_shard, shard_refs

Tensor = torch.Tensor


def training_set(store: ArtifactStore, latents: Manifest, pairs: Manifest | None, size: int, seed: int,
                 pixels: bool) -> dict[str, Tensor]:
    """``size`` pairs by a seeded permutation (the same (cache, size, seed) → the same pairs, in order):
    ``lq`` and ``teacher`` latents (float32) and, with ``pixels``, ``hq`` as uint8 (N, 3, H, W)."""
    lat = latent_shards(store, latents)
    pix = shard_refs(store, pairs) if pixels and pairs is not None else None
    if pixels and (pix is None or [s.count for s in pix] != [s.count for s in lat]):
        raise ValueError("distill: the pairs manifest does not match the latent cache shard for shard "
                         "(the latents must have been encoded from these pairs)")
    refs = [(i, j) for i, s in enumerate(lat) for j in range(s.count)]
    order = torch.randperm(len(refs), generator=torch.Generator().manual_seed(seed))[: min(size, len(refs))]
    picked = [refs[int(k)] for k in order]
    out: dict[str, list] = {"lq": [None] * len(picked), "teacher": [None] * len(picked)}
    if pixels:
        out["hq"] = [None] * len(picked)
    for shard in sorted({i for i, _ in picked}):
        tensors = read_latents(store, lat[shard])
        if "teacher" not in tensors:
            raise ValueError("distill needs cached teacher latents (encode.teacher_output: true)")
        hq = read_shard(store, pix[shard])[1] if pixels else None
        for pos, (i, j) in enumerate(picked):
            if i == shard:
                out["lq"][pos], out["teacher"][pos] = tensors["lq"][j], tensors["teacher"][j]
                if hq is not None:
                    out["hq"][pos] = hq[j]
    return {k: torch.stack(v) for k, v in out.items()}


def random_tiles(data: dict[str, Tensor], idx: Tensor, tile: int | None, factor: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
    """One random ``tile``-sized latent window (the same for the batch) and the matching HQ pixel crop in [0, 1]."""
    h, w = data["lq"].shape[-2:]
    t = min(tile or h, h, w)
    i = int(torch.randint(0, h - t + 1, (1,), generator=generator))
    j = int(torch.randint(0, w - t + 1, (1,), generator=generator))
    z_lq = data["lq"][idx, :, i : i + t, j : j + t]
    z_t = data["teacher"][idx, :, i : i + t, j : j + t]
    hq = None
    if "hq" in data:
        hq = data["hq"][idx, :, i * factor : (i + t) * factor, j * factor : (j + t) * factor].float() / 255
    return z_lq, z_t, hq
