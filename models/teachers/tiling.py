"""Latent tiling with smooth blending, for teachers whose positional embedding fixes the input size.

TSD-SR / TinySR run the SD3 transformer on 64-latent tiles with overlap 8 and Gaussian tile weights
(docs/methods.md §4); a tile-size input is processed untiled, so tiling never changes a result that fits.

    z0 = tiled(restore_tile, z, tile=64, overlap=8)
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, size): stride tile−overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def gaussian_weights(tile: int, var: float = 0.01) -> Tensor:
    """2-D Gaussian tile weights, as in the TSD-SR/TinySR tilers (variance 0.01 on a unit-length tile)."""
    x = (torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2) / tile
    w = torch.exp(-(x**2) / (2 * var))
    return (w[:, None] * w[None, :]).float()


def tiled(fn: Callable[[Tensor], Tensor], z: Tensor, tile: int, overlap: int, max_batch: int = 64) -> Tensor:
    """Apply ``fn`` on overlapping tiles of ``z`` (B, C, H, W) and blend; identical to ``fn(z)`` when it fits.

    Tiles go through ``fn`` in batches of up to ``max_batch`` (TSD-SR batches a column of tiles at a time):
    on CPU one call on 49 tiles is several times faster than 49 calls.
    """
    _, _, h, w = z.shape
    if h <= tile and w <= tile:
        return fn(z)
    if h < tile or w < tile:  # one side shorter than a tile: pad it by reflection, crop after
        ph, pw = max(0, tile - h), max(0, tile - w)
        zp = torch.nn.functional.pad(z, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return tiled(fn, zp, tile, overlap, max_batch)[..., :h, :w]
    weight = gaussian_weights(tile).to(device=z.device, dtype=z.dtype)
    b = z.shape[0]
    origins = [(i, j) for i in tile_starts(h, tile, overlap) for j in tile_starts(w, tile, overlap)]
    out, norm = None, torch.zeros((1, 1, h, w), dtype=z.dtype, device=z.device)
    per_call = max(1, max_batch // b)
    for k in range(0, len(origins), per_call):
        chunk = origins[k : k + per_call]
        ys = fn(torch.cat([z[..., i : i + tile, j : j + tile] for i, j in chunk]))  # (len(chunk)·B, C', t, t)
        if out is None:
            out = torch.zeros((b, ys.shape[1], h, w), dtype=ys.dtype, device=ys.device)
        for n, (i, j) in enumerate(chunk):
            out[..., i : i + tile, j : j + tile] += ys[n * b : (n + 1) * b] * weight
            norm[..., i : i + tile, j : j + tile] += weight
    return out / norm
