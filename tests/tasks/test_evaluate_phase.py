"""Phase fidelity and the phase-only figure (tasks/evaluate/phase.py): pinned to what the Fourier phase is."""

from __future__ import annotations

import numpy as np
import pytest

from srcompress.tasks.evaluate.datasets import EvalItem
from srcompress.tasks.evaluate.phase import phase_fidelity, phase_markdown, phase_only
from srcompress.tasks.evaluate.report import phase_figure


def _image(seed: int = 0, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    return np.clip(base[..., None] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)


def test_fidelity_is_one_for_the_hq_minus_one_for_its_negative_and_ignores_amplitude():
    hr = _image()
    assert phase_fidelity(hr, hr) == pytest.approx(1.0)
    assert phase_fidelity(255 - hr, hr) == pytest.approx(-1.0, abs=1e-6)  # every non-DC phase flipped by π
    # a contrast change scales every amplitude and keeps every phase
    contrast = np.clip((hr.astype(float) - 128) * 0.5 + 128, 0, 255).round().astype(np.uint8)
    assert phase_fidelity(contrast, hr) > 0.99
    shifted = np.roll(hr, 3, axis=1)  # a shift changes the phase linearly with frequency
    assert phase_fidelity(shifted, hr) < 0.7
    assert abs(phase_fidelity(_image(seed=5)[:, ::-1], hr)) < phase_fidelity(contrast, hr)
    with pytest.raises(ValueError):
        phase_fidelity(hr[:16], hr)


def test_phase_only_reconstruction_and_figure():
    hr = _image()
    p = phase_only(hr)
    assert p.shape == hr.shape[:2] and p.dtype == np.uint8 and p.std() > 10
    dimmer = (hr.astype(int) // 2 + 60).astype(np.uint8)  # same phase up to rounding: the same reconstruction
    assert np.abs(phase_only(dimmer).astype(int) - p).mean() < 8
    assert np.abs(phase_only(np.roll(hr, 5, axis=0)).astype(int) - p).mean() > 20
    item = EvalItem(name="set/img#0", lr=hr[::4, ::4], hr=hr, source_sha256="0" * 64)
    fig = phase_figure(item, [("student", hr), ("student_phase_none", 255 - hr)], crop=24)
    assert fig.height > 2 * 24 and fig.width >= 4 * 24
    md = phase_markdown({"student": [0.9, 0.8], "bicubic": [0.5, 0.5]})
    assert "| student | 0.8500 |" in md and "over 2 image(s)" in md
