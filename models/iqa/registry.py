"""One calling convention for every image-quality metric, and a registry that fails loudly on unknown names.

    env = MetricEnv(crop_border=0, color_space="ycbcr")
    psnr = build_metric("psnr", env)            # raises MetricUnavailable("unavailable: <file> not in <dir>")
    scores = psnr.score(sr, hq)                 # (B,) float64, images RGB in [0, 1], (B, 3, H, W)
    fid = build_metric("fid", env); fid.update(sr, hq); fid.compute()

Three kinds (``MetricInfo.mode``): ``FR`` full-reference (needs HQ), ``NR`` no-reference (works on LR-only
sets), ``DIST`` distribution metrics accumulated over a whole set (FID). Backends are pluggable: PSNR, SSIM,
MS-SSIM, NIQE and PIQE are our float64 ports of the official scripts (``native.py``, ``nss.py``),
the learned metrics come from pyiqa, whose licence is non-commercial (docs/stack.md), so each metric is a
small builder keyed by name and a licence-clean backend can register the same names.

A metric whose weights are missing raises ``MetricUnavailable`` at build time — the evaluation reports it
as such, never as a zero and never by crashing the flow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Protocol

if TYPE_CHECKING:  # configs validate metric names through this module: torch loads with the backends
    import numpy as np
    import torch

    Tensor = torch.Tensor
Mode = Literal["FR", "NR", "DIST"]


class MetricUnavailable(RuntimeError):
    """The metric cannot run here (missing weight file, missing package); ``str()`` says exactly why."""


class ImageTooSmall(ValueError):
    """The image is below the metric's minimum size; that image's score is reported as n/a with this reason."""


@dataclass(frozen=True)
class MetricInfo:
    name: str
    mode: Mode
    lower_better: bool
    backend: str
    min_size: int = 1  # shortest side the metric accepts (MS-SSIM: 176, NIQE: one 96-px block)


@dataclass(frozen=True)
class MetricEnv:
    """Conventions and locations shared by all metrics (every field is recorded with the results)."""

    crop_border: int = 0
    test_y_channel: bool = True
    color_space: str = "ycbcr"  # PSNR/SSIM/MS-SSIM; SR papers: BT.601 Y on [16, 235]; also gray (rgb2gray), yiq
    niqe_color_space: str = "gray"  # niqe.m's rgb2gray; BasicSR calculate_niqe's default is ycbcr (nss.py)
    ssim_downsample: bool = False  # pyiqa/papers: False; True mimics Wang's MATLAB auto-downsampling
    ms_ssim_method: str = "product"  # msssim.m's combination of the scales: product (the paper) | wtd_sum
    st_lpips_net: str = "alex"
    niqe_params: Path | None = None  # niqe_pris_params.npz; resolved by the caller (infra/assets.py)
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def conventions(self) -> dict:
        d = asdict(self)
        for k in ("niqe_params", "device", "extra"):
            d.pop(k)
        return d


class ImageMetric(Protocol):
    info: MetricInfo

    def score(self, sr: Tensor, hq: Tensor | None = None) -> Tensor: ...


class DistributionMetric(Protocol):
    info: MetricInfo

    def reset(self) -> None: ...
    def update(self, sr: Tensor, hq: Tensor | None = None) -> None: ...
    def compute(self) -> float: ...
    # What ``update`` accumulated, as arrays, so slices of a set scored apart (Ray workers) add up exactly.
    def state(self) -> dict[str, np.ndarray]: ...
    def load_states(self, states: list[dict[str, np.ndarray]]) -> None: ...


Builder = Callable[[MetricEnv], "ImageMetric | DistributionMetric"]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


# The names the built-in backends register (for validating configs without importing pyiqa).
BUILTIN = ("brisque", "clipiqa", "dists", "fid", "lpips", "maniqa", "ms_ssim", "ms_ssim_pyiqa", "musiq", "niqe",
           "niqe_pyiqa", "piqe", "piqe_pyiqa", "psnr", "psnr_pyiqa", "ssim", "ssim_pyiqa", "st_lpips")


def known_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def metric_names() -> list[str]:
    _load_backends()
    return sorted(_REGISTRY)


def build_metric(name: str, env: MetricEnv | None = None) -> ImageMetric | DistributionMetric:
    """Instantiate ``name``; unknown names list the known ones; missing assets raise ``MetricUnavailable``."""
    _load_backends()
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](env or MetricEnv())


def check_size(info: MetricInfo, x: Tensor) -> None:
    if min(x.shape[-2:]) < info.min_size:
        raise ImageTooSmall(f"{info.name} needs ≥{info.min_size} px, image is {x.shape[-1]}x{x.shape[-2]}")


def require_files(paths: list[Path]) -> None:
    """Raise ``MetricUnavailable('unavailable: <file> not in <dir>')`` for the first missing file."""
    for p in paths:
        if not Path(p).is_file():
            raise MetricUnavailable(f"unavailable: {Path(p).name} not in {Path(p).parent}")


def _load_backends() -> None:
    # Importing registers the builders; kept lazy so `import srcompress.models.iqa` stays cheap.
    from srcompress.models.iqa import fid, native, nss, pyiqa_metrics, stlpips  # noqa: F401
