"""Batched JPEG compression in torch, per-sample quality, with a choice of quantisation-table orientation.

The algorithm of BasicSR's ``DiffJPEG(differentiable=False)`` (``basicsr/utils/diffjpeg.py``), which
Real-ESRGAN uses for its on-the-fly degradation: RGB → YCbCr (JFIF, full range), 4:2:0 chroma subsampling by
2×2 averaging, 8×8 DCT-II, quantisation by the ITU-T T.81 Annex K tables scaled by the libjpeg quality factor
(5000/q below 50, 200−2q from 50 up; BasicSR neither rounds nor clips the scaled table, nor do we), rounding,
dequantisation, inverse DCT, nearest chroma upsampling, YCbCr → RGB, clip. Images are zero-padded to a
multiple of 16 and cropped back, as BasicSR does. See docs/methods.md §1.5.

Table orientation (``tables=``). Our DCT coefficients, like BasicSR's, are indexed [vertical frequency,
horizontal frequency] — the natural (row-major) order in which T.81 prints the tables and libjpeg stores them.

- ``"basicsr"`` (default): BasicSR builds ``y_table``/``c_table`` from Annex K and then *transposes* them
  (``np.array([...]).T``), so coefficient (u, v) is divided by the Annex K entry of (v, u): horizontal detail
  is quantised as vertical detail would be and vice versa. That is the distribution Real-ESRGAN, OSEDiff and
  SeeSR (hence TSD-SR / TinySR) were trained on, so it is the default.
- ``"libjpeg"``: the tables in natural order, as libjpeg (PIL, OpenCV) encodes. At quality 50 (factor 1) the
  effective luminance table equals the one PIL writes into the file (``Image.open(f).quantization[0]``,
  which Pillow returns in natural order, de-zigzagged); at other qualities it differs only by libjpeg's
  rounding and [1, 255] clipping of the scaled table. ``tests/models/test_degradations.py`` checks both
  orientations against PIL, by table and by the decoded pixels; ``test_degradations_basicsr.py`` checks the
  default against BasicSR's ``DiffJPEG`` itself (≤ 1e-4 8-bit levels apart).

Annex K's chrominance table is symmetric, so only the luminance table differs between the two. The difference
is not small: one JPEG at quality 30 of a 256-px photo crop (skimage astronaut) differs by up to 65 8-bit
levels between the orientations, and full ``realesrgan`` degradations of that crop on the same seeds by
13–61 levels at most (mean 1.7–8.5) over seeds 0–7 (the Poisson noise after the first JPEG is resampled from
the changed image, which adds to the gap). PSNR against OpenCV's (libjpeg) encode-decode of that crop at
q=30: 39.1 dB for ``libjpeg``, 33.9 dB for ``basicsr``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Tables = Literal["basicsr", "libjpeg"]
TABLES: tuple[str, ...] = ("basicsr", "libjpeg")

# ITU-T T.81 Annex K, table K.1 (luminance) and K.2 (chrominance), natural order: row = vertical frequency.
_Y_TABLE = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
_C_TABLE = [[17, 18, 24, 47] + [99] * 4, [18, 21, 26, 66] + [99] * 4, [24, 26, 56] + [99] * 5,
            [47, 66] + [99] * 6] + [[99] * 8] * 4

_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_SHIFT = torch.tensor([0.0, 128.0, 128.0])


def _dct_matrix() -> Tensor:
    """Orthonormal 8-point DCT-II: D @ block @ Dᵀ equals JPEG's ¼·α(u)α(v)·Σ cos·cos definition."""
    d = torch.zeros(8, 8, dtype=torch.float64)
    for u in range(8):
        a = math.sqrt(1 / 8) if u == 0 else math.sqrt(2 / 8)
        for x in range(8):
            d[u, x] = a * math.cos((2 * x + 1) * u * math.pi / 16)
    return d.float()


_D = _dct_matrix()


def quality_to_factor(quality: Tensor) -> Tensor:
    """libjpeg's quality scaling as a multiplicative factor on the tables (BasicSR ``quality_to_factor``)."""
    q = quality.float()
    return torch.where(q < 50, 5000.0 / q, 200.0 - 2 * q) / 100.0


def _code_plane(plane: Tensor, table: Tensor) -> Tensor:
    """(B, H, W) plane with H, W multiples of 8 → the same plane after DCT-quantise-dequantise-IDCT.

    ``table``: (B, 8, 8) scaled quantisation tables, indexed like ``coef`` [vertical, horizontal frequency]."""
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4) - 128.0  # (B, h8, w8, 8, 8)
    coef = _D @ blocks @ _D.T
    q = table.view(b, 1, 1, 8, 8)
    coef = torch.round(coef / q) * q
    rec = _D.T @ coef @ _D + 128.0
    return rec.permute(0, 1, 3, 2, 4).reshape(b, h, w)


def quant_tables(quality: Tensor, tables: Tables = "basicsr") -> tuple[Tensor, Tensor]:
    """Effective (luminance, chrominance) tables, each (B, 8, 8), as applied to our DCT output indexed
    [vertical frequency, horizontal frequency]: Annex K scaled by ``quality_to_factor`` (unrounded, unclipped),
    in natural order for ``libjpeg`` and transposed for ``basicsr``."""
    if tables not in TABLES:
        raise ValueError(f"unknown JPEG tables {tables!r} (known: {', '.join(TABLES)})")
    y_tab, c_tab = torch.tensor(_Y_TABLE, dtype=torch.float32), torch.tensor(_C_TABLE, dtype=torch.float32)
    if tables == "basicsr":  # basicsr/utils/diffjpeg.py: y_table = np.array([...]).T, c_table[:4, :4] = (...).T
        y_tab, c_tab = y_tab.T.contiguous(), c_tab.T.contiguous()
    factor = quality_to_factor(quality.reshape(-1)).view(-1, 1, 1)
    return y_tab * factor, c_tab * factor


def jpeg(x: Tensor, quality: Tensor, tables: Tables = "basicsr") -> Tensor:
    """JPEG-compress a batch. x: (B, 3, H, W) in [0, 1]; quality: (B,) in [1, 100]. Returns [0, 1].

    ``tables``: ``basicsr`` (BasicSR DiffJPEG's transposed tables, the Real-ESRGAN training distribution) or
    ``libjpeg`` (natural order, as a real encoder); see the module docstring.
    """
    b, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"jpeg expects RGB input, got {c} channels")
    quality = quality.to(torch.float32).reshape(b)
    y_tab, c_tab = quant_tables(quality, tables)
    hp, wp = (-h) % 16, (-w) % 16
    img = F.pad(torch.clamp(x, 0, 1) * 255.0, (0, wp, 0, hp), mode="constant", value=0.0)
    ycc = torch.einsum("ij,bjhw->bihw", _RGB2YCC, img) + _YCC_SHIFT.view(1, 3, 1, 1)
    y = _code_plane(ycc[:, 0], y_tab)
    chroma = F.avg_pool2d(ycc[:, 1:3], kernel_size=2)  # 4:2:0
    cb = _code_plane(chroma[:, 0], c_tab)
    cr = _code_plane(chroma[:, 1], c_tab)
    chroma = torch.stack([cb, cr], 1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    cb, cr = chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    rgb = torch.clamp(rgb, 0, 255) / 255.0
    return rgb[:, :, :h, :w]
