"""Colour fixes: AdaIN matches statistics; wavelet keeps SR detail and LQ low frequencies."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.colorfix import color_fix, wavelet_decompose


def _imgs():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 48, 40, generator=g) * 0.5 + 0.25
    sr = (ref * 0.8 + 0.15 + 0.02 * torch.randn(2, 3, 48, 40, generator=g)).clamp(0, 1)  # colour-shifted
    return sr, ref


def test_adain_matches_channel_statistics():
    sr, ref = _imgs()
    out = color_fix(sr, ref, "adain")
    assert torch.allclose(out.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=1e-3)
    assert torch.allclose(out.std(dim=(-2, -1)), ref.std(dim=(-2, -1)), atol=1e-3)


def test_wavelet_decomposition_is_exact_and_fix_takes_low_from_ref():
    sr, ref = _imgs()
    high, low = wavelet_decompose(sr)
    assert torch.allclose(high + low, sr, atol=1e-6)
    out = color_fix(sr, ref, "wavelet")
    _, out_low = wavelet_decompose(out)
    _, ref_low = wavelet_decompose(ref)
    assert (out_low - ref_low).abs().mean() < (wavelet_decompose(sr)[1] - ref_low).abs().mean() / 5
    assert torch.allclose(color_fix(ref, ref, "wavelet"), ref, atol=1e-5)  # fixing an image by itself is a no-op


def test_none_and_errors():
    sr, ref = _imgs()
    assert torch.equal(color_fix(sr, ref, "none"), sr)
    with pytest.raises(ValueError, match="unknown color fix"):
        color_fix(sr, ref, "hist")
    with pytest.raises(ValueError, match="SR size"):
        color_fix(sr, ref[..., :10], "adain")
