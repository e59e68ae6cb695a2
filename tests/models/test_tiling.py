"""Latent tiling: exact when the input fits one tile, seamless blending otherwise, any size."""

from __future__ import annotations

import torch

from srcompress.models.teachers.tiling import gaussian_weights, tile_starts, tiled


def test_tile_starts_cover_the_extent():
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(20, 32, 8) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 68 and all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_fits_in_one_tile_is_untiled():
    z = torch.randn(2, 4, 32, 32)
    fn = lambda x: x * 2 + x.mean(dim=(-2, -1), keepdim=True)  # noqa: E731  (tile-dependent: mean)
    assert torch.equal(tiled(fn, z, 32, 8), fn(z))


def test_pointwise_fn_is_reproduced_exactly_and_batched_equals_unbatched():
    z = torch.randn(2, 4, 77, 50)  # odd sizes, not multiples of the tile
    fn = lambda x: torch.tanh(x) * 3  # noqa: E731  (pointwise: tiling must not change it)
    assert torch.allclose(tiled(fn, z, 16, 6), fn(z), atol=1e-6)
    assert torch.allclose(tiled(fn, z, 16, 6, max_batch=1), tiled(fn, z, 16, 6, max_batch=64), atol=1e-6)


def test_blending_has_no_seams_for_a_context_dependent_fn():
    # fn depends on each tile's mean: without blending, tile borders would show steps.
    z = torch.linspace(0, 1, 96).repeat(1, 1, 96, 1)
    fn = lambda x: x + 0.1 * x.mean(dim=(-2, -1), keepdim=True)  # noqa: E731
    out = tiled(fn, z, 32, 16)
    row = out[0, 0, 48]
    steps = (row[1:] - row[:-1]).abs()
    assert steps.max() < 3 * (1 / 95) + 1e-3  # the ramp's own slope, no jumps at tile borders
    w = gaussian_weights(32)
    assert w.shape == (32, 32) and w.max() == w[15:17, 15:17].max()
