"""A look at what degradation made: the first pairs of the first shard, LQ (nearest-upscaled, so its pixels
show) beside its HQ crop, one pair per row, as a PNG for the step's MLflow run."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore
from srcompress.tasks.common.pairs import read_shard, shard_refs


def pairs_preview(store: ArtifactStore, pairs: Manifest, n: int = 4, gap: int = 4) -> bytes | None:
    """PNG bytes of up to ``n`` rows ``LQ | HQ``; None for an empty set."""
    refs = shard_refs(store, pairs)
    if not refs:
        return None
    lq, hq, _ = read_shard(store, refs[0])
    rows = []
    for i in range(min(n, len(lq))):
        h = hq[i].permute(1, 2, 0).numpy()
        low = lq[i].permute(1, 2, 0).numpy()
        fy, fx = max(1, h.shape[0] // low.shape[0]), max(1, h.shape[1] // low.shape[1])
        up = np.repeat(np.repeat(low, fy, axis=0), fx, axis=1)[: h.shape[0], : h.shape[1]]
        white = np.full((h.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([up, white, h], axis=1))
    width = max(r.shape[1] for r in rows)
    sep = np.full((gap, width, 3), 255, np.uint8)
    grid = np.concatenate([part for r in rows for part in (r, sep)][:-1], axis=0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()
