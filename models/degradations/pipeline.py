"""Real-ESRGAN second-order degradation, batched, seeded per sample.

The sequence is BasicSR's ``RealESRGANModel.feed_data`` (docs/methods.md §1.1):

    [USM] → blur(k1) → resize(up/down/keep) → noise(Gaussian|Poisson, gray?) → JPEG
          → [p: blur(k2)] → resize to (H/s)·r → noise → 50/50 {resize→sinc→JPEG | JPEG→resize→sinc}
          → [resize back] → quantise (at LQ size, at the output, or clamp only: ``final.quantize``, §1.4)

One deliberate difference (docs/methods.md §1.2): BasicSR draws the resize scale/mode, the noise type and
JPEG quality once per *batch*; we draw them per *sample*, so a pair depends only on (seed, source digest,
crop index) — never on batch composition or worker count. The distribution of each sample is unchanged.
Samples whose shapes agree are still processed as one batch (``ops.grouped``). Both JPEG steps use the
quantisation-table orientation ``cfg.jpeg_tables`` (§1.5). For the same draws the LQ equals the one BasicSR's
own functions give (§1.6, ``tests/models/test_degradations_basicsr.py``).

    from srcompress.models.degradations import degrade_batch
    lq, hq, params = degrade_batch(hq_crops, seeds, cfg)   # cfg: DegradationConfig
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from srcompress.models.degradations import ops
from srcompress.models.degradations.config import DegradationConfig, StageConfig
from srcompress.models.degradations.jpeg import jpeg
from srcompress.models.degradations.kernels import draw_blur_kernel, draw_final_sinc

Tensor = torch.Tensor
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class ResizeDraw:
    kind: str  # up | down | keep
    scale: float
    mode: str


@dataclass(frozen=True)
class NoiseDraw:
    gaussian: bool
    amount: float  # sigma (0-255 scale) or Poisson scale
    gray: bool


@dataclass(frozen=True)
class SampleParams:
    """Every random choice of one pair, drawn up front in a fixed order from its own generator."""

    kernel1: np.ndarray
    kernel1_type: str
    kernel2: np.ndarray
    kernel2_type: str
    sinc: np.ndarray
    resize1: ResizeDraw
    noise1: NoiseDraw
    jpeg1: float
    blur2: bool
    resize2: ResizeDraw
    noise2: NoiseDraw
    order_a: bool
    final_mode: str
    jpeg2: float
    back_mode: str


def _draw_resize(rng: np.random.Generator, st: StageConfig) -> ResizeDraw:
    p = np.asarray(st.resize_prob, dtype=np.float64)
    kind = ("up", "down", "keep")[int(rng.choice(3, p=p / p.sum()))]
    scale = {"up": lambda: rng.uniform(1, st.resize_range[1]), "down": lambda: rng.uniform(st.resize_range[0], 1),
             "keep": lambda: 1.0}[kind]()
    return ResizeDraw(kind, float(scale), RESIZE_MODES[int(rng.integers(3))])


def _draw_noise(rng: np.random.Generator, st: StageConfig) -> NoiseDraw:
    gaussian = bool(rng.uniform() < st.gaussian_noise_prob)
    amount = rng.uniform(*st.noise_range) if gaussian else rng.uniform(*st.poisson_scale_range)
    return NoiseDraw(gaussian, float(amount), bool(rng.uniform() < st.gray_noise_prob))


def draw_params(rng: np.random.Generator, cfg: DegradationConfig) -> SampleParams:
    k1, k1t = draw_blur_kernel(rng, cfg.kernel1)
    k2, k2t = draw_blur_kernel(rng, cfg.kernel2)
    sinc = draw_final_sinc(rng, cfg.final.final_sinc_prob, cfg.final.sinc_kernel_sizes, cfg.kernel1.pad_to)
    resize1, noise1 = _draw_resize(rng, cfg.stage1), _draw_noise(rng, cfg.stage1)
    jpeg1 = float(rng.uniform(*cfg.stage1.jpeg_range))
    blur2 = bool(rng.uniform() < cfg.stage2.blur_prob)
    resize2, noise2 = _draw_resize(rng, cfg.stage2), _draw_noise(rng, cfg.stage2)
    order_a = bool(rng.uniform() < cfg.final.order_prob)
    final_mode = RESIZE_MODES[int(rng.integers(3))]
    jpeg2 = float(rng.uniform(*cfg.stage2.jpeg_range))
    back_mode = RESIZE_MODES[int(rng.integers(3))] if cfg.final.resize_back == "random" else "bicubic"
    return SampleParams(k1, k1t, k2, k2t, sinc, resize1, noise1, jpeg1, blur2, resize2, noise2, order_a,
                        final_mode, jpeg2, back_mode)


def _kernels(params: Sequence[SampleParams], idx: list[int], name: str) -> Tensor:
    return torch.from_numpy(np.stack([getattr(params[i], name) for i in idx]))


def _add_noise(xs: list[Tensor], draws: list[NoiseDraw], gens: list[torch.Generator]) -> list[Tensor]:
    return [ops.add_noise(x, d.gaussian, d.amount, d.gray, g) for x, d, g in zip(xs, draws, gens)]


def _jpeg(xs: list[Tensor], q: list[float], tables: str) -> list[Tensor]:
    return ops.grouped(xs, lambda b, idx: jpeg(b, torch.tensor([q[i] for i in idx]), tables=tables))


def _sinc(xs: list[Tensor], params: Sequence[SampleParams]) -> list[Tensor]:
    return ops.grouped(xs, lambda b, idx: ops.filter2d(b, _kernels(params, idx, "sinc")))


def degrade_batch(hq: Tensor, seeds: Sequence[int], cfg: DegradationConfig) -> tuple[Tensor, Tensor, list[SampleParams]]:
    """Degrade a batch of HQ crops. hq: (B, 3, H, W) float in [0, 1], H and W multiples of ``cfg.scale``.

    Returns (lq, hq_out, params): lq is (B, 3, H/s, W/s), or (B, 3, H, W) when ``final.resize_back`` is set,
    always clamped to [0, 1] and rounded to 8-bit levels where ``final.quantize`` says (docs/methods.md §1.4);
    hq_out is the stored GT (USM-sharpened when ``usm.save_sharpened_gt``).
    """
    b, _, h, w = hq.shape
    if len(seeds) != b:
        raise ValueError(f"need one seed per sample: {len(seeds)} seeds for batch {b}")
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    gens = [torch.Generator().manual_seed(int(s) & ((1 << 63) - 1)) for s in seeds]
    params = [draw_params(r, cfg) for r in rngs]
    s = cfg.scale

    gt_usm = ops.usm_sharp(hq, cfg.usm.radius, cfg.usm.weight, cfg.usm.threshold) if cfg.usm.enabled else hq
    hq_out = gt_usm if (cfg.usm.enabled and cfg.usm.save_sharpened_gt) else hq

    # ---- first stage (all crops share a shape: one batched blur) ----
    out = ops.filter2d(gt_usm, _kernels(params, list(range(b)), "kernel1"))
    # by scale factor, as BasicSR's first resize (the later ones go to a size): ops.rescale says why it matters
    xs = [ops.rescale(out[i : i + 1], p.resize1.scale, p.resize1.mode) for i, p in enumerate(params)]
    xs = _add_noise(xs, [p.noise1 for p in params], gens)
    xs = _jpeg(xs, [p.jpeg1 for p in params], cfg.jpeg_tables)

    # ---- second stage ----
    blur_idx = [i for i, p in enumerate(params) if p.blur2]
    blurred = ops.grouped([xs[i] for i in blur_idx],
                          lambda bt, idx: ops.filter2d(bt, _kernels(params, [blur_idx[j] for j in idx], "kernel2")))
    for i, y in zip(blur_idx, blurred):
        xs[i] = y
    xs = [ops.resize(x, (int(h / s * p.resize2.scale), int(w / s * p.resize2.scale)), p.resize2.mode)
          for x, p in zip(xs, params)]
    xs = _add_noise(xs, [p.noise2 for p in params], gens)

    # ---- final: resize to LQ size, sinc and JPEG in one of two orders (others make "twisted lines") ----
    lq_size = (h // s, w // s)
    a_idx = [i for i, p in enumerate(params) if p.order_a]
    b_idx = [i for i, p in enumerate(params) if not p.order_a]
    for i in a_idx:
        xs[i] = ops.resize(xs[i], lq_size, params[i].final_mode)
    if b_idx:
        jb = _jpeg([xs[i] for i in b_idx], [params[i].jpeg2 for i in b_idx], cfg.jpeg_tables)
        for i, y in zip(b_idx, jb):
            xs[i] = ops.resize(y, lq_size, params[i].final_mode)
    lq = torch.cat(_sinc(xs, params))
    if a_idx:
        ja = jpeg(lq[a_idx], torch.tensor([params[i].jpeg2 for i in a_idx]), tables=cfg.jpeg_tables)
        lq[a_idx] = ja

    # ---- quantisation point (docs/methods.md §1.4); with resize_back "none", lq and output coincide ----
    point = cfg.final.quantize
    if point == "lq":  # BasicSR / StableSR: round at LQ size, before any resize back
        lq = ops.quantize(lq)
    if cfg.final.resize_back != "none":
        lq = torch.cat([ops.resize(lq[i : i + 1], (h, w), params[i].back_mode) for i in range(b)])
    # output (OSEDiff): round the stored, resized LQ; lq / none: clamp only (bicubic resizing overshoots)
    lq = ops.quantize(lq) if point == "output" else torch.clamp(lq, 0, 1)
    return lq, hq_out, params
