"""Latent tiling: exact when the input fits one tile, seamless blending otherwise, any size.

Overwriting tiles (or averaging them with flat weights) instead of Gaussian blending keeps a pointwise fn exact,
so the blending tests below use fns whose per-tile output depends on the tile: a position-dependent bias and a
3×3 convolution (zero-padded at tile edges). Either mutation fails them by an order of magnitude.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from srcompress.models.teachers.tiling import gaussian_weights, tile_starts, tiled


def test_tile_starts_cover_the_extent():
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(20, 32, 8) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 68 and all(b - a <= 24 for a, b in pairwise(starts))


def test_fits_in_one_tile_is_untiled():
    z = torch.randn(2, 4, 32, 32)
    fn = lambda x: x * 2 + x.mean(dim=(-2, -1), keepdim=True)  # noqa: E731  (tile-dependent: mean)
    assert torch.equal(tiled(fn, z, 32, 8), fn(z))


def test_pointwise_fn_is_reproduced_exactly_and_batched_equals_unbatched():
    z = torch.randn(2, 4, 77, 50)  # odd sizes, not multiples of the tile
    fn = lambda x: torch.tanh(x) * 3  # noqa: E731  (pointwise: tiling must not change it)
    assert torch.allclose(tiled(fn, z, 16, 6), fn(z), atol=1e-6)
    assert torch.allclose(tiled(fn, z, 16, 6, max_batch=1), tiled(fn, z, 16, 6, max_batch=64), atol=1e-6)


def test_max_batch_is_honoured_when_a_side_is_shorter_than_a_tile():
    # The short side is padded up to a tile and tiled again: the batch cap must survive that recursion.
    seen = []
    fn = lambda x: seen.append(x.shape[0]) or x  # records each call's batch
    z = torch.randn(2, 4, 10, 50)
    assert torch.allclose(tiled(fn, z, 16, 6, max_batch=2), z)
    assert len(seen) > 1 and max(seen) == 2, seen  # one tile (× batch 2) per call


def test_blend_weights_are_normalised():
    # A constant fn must come back as the same constant everywhere, overlaps and image borders included:
    # the per-pixel weights of the covering tiles sum to one (a missing or wrong normalisation breaks this).
    z = torch.zeros(1, 1, 77, 50)
    out = tiled(lambda x: torch.full_like(x, 2.5), z, 16, 6)
    assert torch.allclose(out, torch.full_like(z, 2.5), rtol=0, atol=1e-5)


@torch.no_grad()
def test_translation_equivariant_fn_is_reconstructed_through_the_blend():
    # A 3×3 conv is wrong only on each tile's outermost ring (zero padding where the tile lacks context). The
    # Gaussian weights vanish there (~1e-5 of the centre), so blending reproduces the untiled conv; overwriting
    # lets every later tile's wrong edge column win (error ~1), flat averaging gives it half the say (~0.8).
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    z = torch.randn(2, 4, 40, 56)  # 40 = 16 + 3·8, 56 = 16 + 5·8: a regular grid (no flush-end extra tile,
    # whose edge column sits one pixel from its neighbour's edge and so is not down-weighted)
    ref = conv(z)
    for max_batch in (1, 64):
        err = (tiled(conv, z, 16, 8, max_batch=max_batch) - ref).abs().max().item()
        assert err < 1e-4, (max_batch, err)


def test_blending_removes_the_step_of_a_position_dependent_bias():
    # fn adds a ramp across each tile (0 at its left edge, A at its right): neighbouring tiles disagree by
    # J = A·stride/(tile−1) at every pixel of their overlap. Overwriting puts all of J into the one-pixel step
    # where the next tile starts; blending hands over inside the overlap, where the leaving tile's weight is
    # still ~1 at the next tile's first column, so the step there stays the ramp's own slope.
    tile, overlap, a = 32, 16, 0.5
    z = torch.zeros(1, 1, 96, 96)
    ramp = a * torch.arange(tile, dtype=z.dtype) / (tile - 1)
    out = tiled(lambda x: x + ramp, z, tile, overlap)
    row = out[0, 0, 48]
    steps = (row[1:] - row[:-1]).abs()  # steps[k] = |row[k+1] − row[k]|
    interior = a / (tile - 1)  # the ramp's slope inside a tile
    jump = a * (tile - overlap) / (tile - 1)  # what the two tiles disagree by
    borders = tile_starts(96, tile, overlap)[1:]  # the columns where an overwriting tiler switches tiles
    border_step = max(steps[s - 1].item() for s in borders)
    assert border_step < 1.5 * interior, (border_step, interior)
    # the hand-over itself is spread over several pixels: no single step carries half the disagreement
    assert steps.max().item() < 0.5 * jump, (steps.max().item(), jump)
    w = gaussian_weights(32)
    assert w.shape == (32, 32) and w.max() == w[15:17, 15:17].max()
