"""How well each model gets the Fourier phase of the HQ image — PGP-DiffSR's observation (Fig. 1) that a pruned
model estimates the restoration's phase poorly, which its phase-exchange adapter answers (docs/methods.md §8.4).

    fidelity = phase_fidelity(sr_u8, hr_u8)       # amplitude-weighted mean cos(∠SR − ∠HQ) of the Y channel
    gray = phase_only(img_u8)                     # the figure's lower row (tasks/evaluate/report.py)

Phase-only reconstruction (Oppenheim & Lim): IFFT2(e^{i·∠FFT2(y)}) — unit amplitude, the image's own phase —
shows the structure the phase carries. Fidelity weights each frequency by the HQ amplitude, so the edges that
matter count, not the noise floor: 1 = the HQ's phase everywhere, 0 = unrelated. Our measure (the paper shows
figures, no number).
"""

from __future__ import annotations

import numpy as np
import torch

from srcompress.models.metrics import rgb_to_y


def _y(img_u8: np.ndarray) -> np.ndarray:
    """The evaluation's Y channel (BT.601); its offset and scale move no phase (the DC term is left out)."""
    x = torch.from_numpy(np.ascontiguousarray(img_u8[..., :3])).permute(2, 0, 1)[None].double() / 255.0
    return rgb_to_y(x)[0].numpy()


def phase_fidelity(sr_u8: np.ndarray, hr_u8: np.ndarray) -> float:
    """Amplitude-weighted mean cos(∠FFT2(Y_sr) − ∠FFT2(Y_hr)), DC excluded; both H×W×3 uint8 of one size."""
    if sr_u8.shape[:2] != hr_u8.shape[:2]:
        raise ValueError(f"phase fidelity: {sr_u8.shape[:2]} vs {hr_u8.shape[:2]}")
    fs, fh = np.fft.fft2(_y(sr_u8)), np.fft.fft2(_y(hr_u8))
    w = np.abs(fh)
    w[0, 0] = 0.0  # the mean brightness has no phase worth scoring
    return float((w * np.cos(np.angle(fs) - np.angle(fh))).sum() / max(w.sum(), 1e-12))


def phase_only(img_u8: np.ndarray) -> np.ndarray:
    """The Y channel's phase-only reconstruction, contrast-stretched (1st–99th percentile) to uint8 grey."""
    rec = np.real(np.fft.ifft2(np.exp(1j * np.angle(np.fft.fft2(_y(img_u8))))))
    lo, hi = np.percentile(rec, [1, 99])
    return (np.clip((rec - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def phase_markdown(scores: dict[str, list[float]]) -> str:
    """Per model, the mean phase fidelity to the HQ over the figure images."""
    if not scores:
        return ""
    n = len(next(iter(scores.values())))
    lines = ["## Phase fidelity to the HQ (PGP-DiffSR Fig. 1)", "",
             f"Amplitude-weighted mean cos(∠model − ∠HQ) of the Y channel's spectrum over {n} image(s) "
             "(1: the HQ's phase; phase-only reconstructions in `phase/`).", "",
             "| model | phase fidelity |", "|---|---|"]
    lines += [f"| {m} | {np.mean(v):.4f} |" for m, v in scores.items()]
    return "\n".join(lines) + "\n"
