"""pyiqa-backed metrics with the SR conventions made explicit and weight files checked before construction.

Conventions (docs/methods.md §5; docs/stack.md):
- The default ``psnr``/``ssim``/``ms_ssim``/``niqe``/``piqe`` are the float64 official-convention
  implementations in ``native.py``/``nss.py`` (why: see there). pyiqa's versions stay available
  as ``<name>_pyiqa`` for comparison with papers that used them: ``psnr_pyiqa``/``ssim_pyiqa``/``ms_ssim_pyiqa``
  on the luma of ``color_space`` (pyiqa's own default, ``yiq``, is never used implicitly), ``crop_border``
  pixels removed from every edge first; ``piqe_pyiqa`` with pyiqa's defaults.
- ``niqe_pyiqa``: pyiqa's NIQE with the official MATLAB prior (``niqe_pris_params.npz`` from the basicsr
  sdist, converted once to the ``.mat`` layout pyiqa reads), on ``niqe_color_space``, 96×96 blocks.
- LPIPS (AlexNet, v0.1), DISTS, MUSIQ (KonIQ), MANIQA (KonIQ), CLIPIQA, BRISQUE: only when their weights are
  in pyiqa's cache (and torchvision's for the ImageNet trunks); otherwise ``MetricUnavailable`` names the file.

Construction runs with ``HF_HUB_OFFLINE=1`` so nothing is fetched from a model hub at run time.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srcompress.models.iqa.registry import (
    ImageTooSmall,
    MetricEnv,
    MetricInfo,
    MetricUnavailable,
    check_size,
    register,
    require_files,
)

Tensor = torch.Tensor


def pyiqa_cache() -> Path:
    """Where pyiqa looks for weights (fixed when pyiqa is imported: ``$TORCH_HOME/hub/pyiqa``)."""
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    return Path(DEFAULT_CACHE_DIR)


def torchvision_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@contextlib.contextmanager
def _offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _create(name: str, env: MetricEnv, **opts: Any):
    import pyiqa

    try:
        with _offline():
            return pyiqa.create_metric(name, as_loss=False, device=torch.device(env.device), **opts)
    except MetricUnavailable:
        raise
    except Exception as exc:  # a download attempt or a missing sub-model: report, never crash the flow
        raise MetricUnavailable(f"unavailable: pyiqa could not build {name!r} offline ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


class PyiqaMetric:
    """A pyiqa metric scored one image at a time (evaluation images differ in size)."""

    def __init__(self, info: MetricInfo, env: MetricEnv, pyiqa_name: str, crop: bool = False, **opts: Any):
        self.info, self.env, self._crop = info, env, crop
        self.net = _create(pyiqa_name, env, **opts)

    def _prep(self, x: Tensor) -> Tensor:
        c = self.env.crop_border
        x = x.double().clamp(0, 1) if self._crop else x.float().clamp(0, 1)
        return x[..., c:-c, c:-c] if (self._crop and c) else x

    @torch.no_grad()
    def score(self, sr: Tensor, hq: Tensor | None = None) -> Tensor:
        if self.info.mode == "FR" and hq is None:
            raise ValueError(f"{self.info.name} is full-reference: it needs the HQ image")
        if hq is not None and self.info.mode == "FR" and sr.shape != hq.shape:
            raise ValueError(f"{self.info.name}: SR {tuple(sr.shape)} and HQ {tuple(hq.shape)} differ")
        out = []
        for i in range(sr.shape[0]):
            x = self._prep(sr[i : i + 1])
            check_size(self.info, x)
            if self.info.mode == "FR":
                val = self.net(x, self._prep(hq[i : i + 1]))
            else:
                val = self.net(x)
            out.append(float(torch.as_tensor(val).reshape(-1)[0]))
        return torch.tensor(out, dtype=torch.float64)


def _pyiqa_space(color_space: str) -> str:
    """pyiqa knows ``ycbcr`` and ``yiq``; any other name silently scores the red channel, so ``gray``
    (MATLAB rgb2gray, native metrics) maps to ``yiq``, the same weights to three decimals."""
    if color_space not in ("ycbcr", "yiq", "gray"):
        raise ValueError(f"unknown colour space {color_space!r} (ycbcr | gray | yiq)")
    return "yiq" if color_space == "gray" else color_space


def _fr_pixel(name: str, env: MetricEnv, min_size: int = 1, registered: str | None = None, **opts: Any) -> PyiqaMetric:
    info = MetricInfo(registered or name, "FR", False, "pyiqa", min_size)
    return PyiqaMetric(info, env, name, crop=True, test_y_channel=env.test_y_channel,
                       color_space=_pyiqa_space(env.color_space),
                       **opts)


@register("psnr_pyiqa")
def _psnr(env: MetricEnv) -> PyiqaMetric:
    return _fr_pixel("psnr", env, registered="psnr_pyiqa")


@register("ssim_pyiqa")
def _ssim(env: MetricEnv) -> PyiqaMetric:
    return _fr_pixel("ssim", env, registered="ssim_pyiqa", downsample=env.ssim_downsample)


@register("ms_ssim_pyiqa")
def _ms_ssim(env: MetricEnv) -> PyiqaMetric:
    # Five dyadic scales of an 11-tap window: 11·2⁴ = 176 px is the smallest image MS-SSIM is defined on.
    return _fr_pixel("ms_ssim", env, min_size=176, registered="ms_ssim_pyiqa", downsample=env.ssim_downsample)


def niqe_mat(npz_path: Path) -> Path:
    """The npz prior re-saved in the ``.mat`` layout pyiqa's NIQE loads (``mu_prisparam``/``cov_prisparam``)."""
    import scipy.io

    mat = Path(npz_path).with_suffix(".mat")
    if not mat.is_file() or mat.stat().st_mtime < Path(npz_path).stat().st_mtime:
        with np.load(npz_path, allow_pickle=False) as npz:
            mu, cov = np.asarray(npz["mu_pris_param"], np.float64), np.asarray(npz["cov_pris_param"], np.float64)
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"mu_prisparam": mu.reshape(1, -1), "cov_prisparam": cov})
        tmp = mat.with_name(f".{mat.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, mat)  # atomic: concurrent builders never see a half-written file
    return mat


class Niqe(PyiqaMetric):
    BLOCK = 96  # the official recommended block size (no overlap)

    def score(self, sr: Tensor, hq: Tensor | None = None) -> Tensor:
        c = self.env.crop_border
        h, w = sr.shape[-2] - 2 * c, sr.shape[-1] - 2 * c
        if (h // self.BLOCK) * (w // self.BLOCK) < 2:  # the distorted MVG needs ≥2 blocks for a covariance
            raise ImageTooSmall(f"niqe needs at least two {self.BLOCK}x{self.BLOCK} blocks, image is {w}x{h}")
        return super().score(sr, None)


@register("niqe_pyiqa")
def _niqe(env: MetricEnv) -> Niqe:
    if env.niqe_params is None:
        raise MetricUnavailable("unavailable: niqe_pris_params.npz not located (run `srcompress assets fetch`)")
    require_files([Path(env.niqe_params)])
    info = MetricInfo("niqe_pyiqa", "NR", True, "pyiqa+basicsr-params", 1)
    return Niqe(info, env, "niqe", crop=False, test_y_channel=True, color_space=_pyiqa_space(env.niqe_color_space),
                crop_border=env.crop_border, pretrained_model_path=str(niqe_mat(Path(env.niqe_params))))


@register("piqe_pyiqa")
def _piqe(env: MetricEnv) -> PyiqaMetric:
    return PyiqaMetric(MetricInfo("piqe_pyiqa", "NR", True, "pyiqa", 16), env, "piqe")


# name → (pyiqa name, mode, lower_better, files under pyiqa's cache, files under torchvision's cache)
_WEIGHTED: dict[str, tuple[str, str, bool, list[str], list[str]]] = {
    "lpips": ("lpips", "FR", True, ["LPIPS_v0.1_alex-df73285e.pth"], ["alexnet-owt-7be5be79.pth"]),
    "dists": ("dists", "FR", True, ["DISTS_weights-f5e65c96.pth"], ["vgg16-397923af.pth"]),
    "brisque": ("brisque", "NR", True, ["brisque_svm_weights.pth"], []),
    "musiq": ("musiq", "NR", False, ["musiq_koniq_ckpt-e95806b9.pth"], []),
    "maniqa": ("maniqa", "NR", False, ["ckpt_koniq10k.pt"], []),
    "clipiqa": ("clipiqa", "NR", False, [], []),  # CLIP RN50 under <hub>/clip, checked below
}


def _weighted(name: str):
    pyiqa_name, mode, lower, pyiqa_files, tv_files = _WEIGHTED[name]

    def build(env: MetricEnv) -> PyiqaMetric:
        files = [pyiqa_cache() / f for f in pyiqa_files] + [torchvision_cache() / f for f in tv_files]
        if name == "clipiqa":
            files.append(Path(torch.hub.get_dir()) / "clip" / "RN50.pt")
        require_files(files)
        return PyiqaMetric(MetricInfo(name, mode, lower, "pyiqa", 32), env, pyiqa_name)

    return build


for _name in _WEIGHTED:
    register(_name)(_weighted(_name))
