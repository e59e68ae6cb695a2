"""How well each model gets the Fourier phase of the HQ image — PGP-DiffSR's observation (Fig. 1) that a pruned
model estimates the restoration's phase poorly, which its phase-exchange adapter answers (docs/methods.md §8.4).

    fidelity = phase_fidelity(sr_u8, hr_u8)       # amplitude-weighted mean cos(∠SR − ∠HQ) of the Y channel
    png = phase_figure(item, panels, crop)        # images over their phase-only reconstructions

Phase-only reconstruction (Oppenheim & Lim): IFFT2(e^{i·∠FFT2(y)}) — unit amplitude, the image's own phase —
shows the structure the phase carries. Fidelity weights each frequency by the HQ amplitude, so the edges that
matter count, not the noise floor: 1 = the HQ's phase everywhere, 0 = unrelated. Our measure (the paper shows
figures, no number).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Y = np.array([65.481, 128.553, 24.966]) / 255.0  # BT.601 luma of [0, 1] RGB (the evaluation's Y, no offset)


def _y(img_u8: np.ndarray) -> np.ndarray:
    return (img_u8[..., :3].astype(np.float64) / 255.0) @ Y


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


def phase_figure(lq_up_u8: np.ndarray, panels: list[tuple[str, np.ndarray]], hr_u8: np.ndarray | None,
                 crop: int) -> Image.Image:
    """Two rows, centre-cropped to ``crop``: LQ (upsampled) | each model | HQ, and under each its phase-only
    reconstruction (computed on the whole image, then cropped)."""
    from srcompress.tasks.evaluate.report import _label

    tiles = [("LQ", lq_up_u8)] + panels + ([("HQ", hr_u8)] if hr_u8 is not None else [])
    h, w = tiles[1][1].shape[:2] if len(tiles) > 1 else tiles[0][1].shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    cut = lambda a: np.ascontiguousarray(a[top : top + ch, left : left + cw])  # noqa: E731
    rows = [[_label(Image.fromarray(cut(a)), t) for t, a in tiles],
            [_label(Image.fromarray(cut(phase_only(a))).convert("RGB"), f"{t} phase") for t, a in tiles]]
    fig = Image.new("RGB", (sum(i.width for i in rows[0]) + 2 * (len(tiles) - 1), 2 * rows[0][0].height + 2),
                    (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for im in row:
            fig.paste(im, (x, r * (rows[0][0].height + 2)))
            x += im.width + 2
    return fig


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
