"""The knobs of the Real-ESRGAN degradation functions: kernels, stages, USM, the final step, JPEG tables.

``DegradationConfig`` holds every field that ``draw_params`` / ``degrade_batch`` / the kernel draws read. It is
pure pydantic (``srcompress.typed.StrictModel``), so ``models/`` owns its own parameters and imports nothing
from tasks/, flows/ or infra/. The ``degrade`` step's config (``tasks/degrade/config.py``, ``DegradeConfig``)
subclasses it, adding cropping, batching, sharding and the presets; the user-facing keys are ``degrade.*``.

Defaults follow BasicSR (``basicsr/data/realesrgan_dataset.py``, ``basicsr/models/realesrgan_model.py``,
``options/train/RealESRGAN/train_realesrnet_x4plus.yml``); see docs/methods.md §1.1 (sequence and defaults),
§1.4 (quantisation point) and §1.5 (JPEG tables).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from srcompress.typed import StrictModel, deep_merge

KernelName = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
QuantizePoint = Literal["lq", "output", "none"]
JpegTables = Literal["basicsr", "libjpeg"]
Range = tuple[float, float]

# BasicSR realesrgan_dataset.py: `self.kernel_range = [2 * v + 1 for v in range(3, 11)]`, i.e. 7..21.
BASICSR_KERNEL_SIZES = [2 * v + 1 for v in range(3, 11)]


def _check_range(value: Range, name: str, low: float = -math.inf, high: float = math.inf) -> Range:
    a, b = value
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value}")
    return value


class KernelConfig(StrictModel):
    """One blur-kernel family (kernel 1 for the first stage, kernel 2 for the second)."""

    kernel_sizes: list[int] = Field(list(BASICSR_KERNEL_SIZES), description="Odd kernel sizes drawn uniformly (BasicSR: 7..21, hard-coded).")
    kernel_list: list[KernelName] = Field(
        ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
        description="Gaussian-family kernel types for random_mixed_kernels.",
    )
    kernel_prob: list[float] = Field([0.45, 0.25, 0.12, 0.03, 0.12, 0.03], description="Probability of each kernel type (same order as kernel_list).")
    sinc_prob: float = Field(0.1, ge=0, le=1, description="Probability of a sinc (circular low-pass) kernel instead of a Gaussian-family one.")
    blur_sigma: Range = Field((0.2, 3.0), description="Range of sigma_x / sigma_y for Gaussian-family kernels.")
    betag_range: Range = Field((0.5, 4.0), description="Shape range of generalized Gaussian kernels (split 50/50 at 1).")
    betap_range: Range = Field((1.0, 2.0), description="Shape range of plateau kernels (split 50/50 at 1).")
    pad_to: int = Field(21, ge=3, description="Kernels are zero-padded to this odd size (BasicSR: 21).")

    @model_validator(mode="after")
    def _check(self) -> KernelConfig:
        if any(k % 2 == 0 or k < 3 or k > self.pad_to for k in self.kernel_sizes) or not self.kernel_sizes:
            raise ValueError(f"kernel_sizes must be odd, >= 3 and <= pad_to={self.pad_to}: {self.kernel_sizes}")
        if self.pad_to % 2 == 0:
            raise ValueError("pad_to must be odd")
        if len(self.kernel_list) != len(self.kernel_prob) or not self.kernel_list:
            raise ValueError("kernel_list and kernel_prob must have the same, non-zero length")
        if any(p < 0 for p in self.kernel_prob) or sum(self.kernel_prob) <= 0:
            raise ValueError("kernel_prob must be non-negative with a positive sum")
        _check_range(self.blur_sigma, "blur_sigma", 1e-3)
        for name in ("betag_range", "betap_range"):  # the shape draw splits 50/50 at 1 (BasicSR): 1 must be inside
            lo, hi = _check_range(getattr(self, name), name, 1e-3)
            if not lo <= 1.0 <= hi:
                raise ValueError(f"{name} must contain 1 (its draw splits 50/50 at 1, as BasicSR's), got {(lo, hi)}")
        return self


class StageConfig(StrictModel):
    """One degradation stage: blur → random resize → noise → JPEG (JPEG of stage 2 happens in `final`)."""

    blur_prob: float = Field(1.0, ge=0, le=1, description="Probability to apply this stage's blur kernel (stage 2: BasicSR second_blur_prob).")
    resize_prob: tuple[float, float, float] = Field((0.2, 0.7, 0.1), description="Probabilities of up / down / keep.")
    resize_range: Range = Field((0.15, 1.5), description="Scale range: up draws U[1, max], down draws U[min, 1].")
    gaussian_noise_prob: float = Field(0.5, ge=0, le=1, description="Probability of Gaussian noise; otherwise Poisson.")
    noise_range: Range = Field((1.0, 30.0), description="Gaussian noise sigma range on the 0-255 scale.")
    poisson_scale_range: Range = Field((0.05, 3.0), description="Poisson noise scale range.")
    gray_noise_prob: float = Field(0.4, ge=0, le=1, description="Probability that the noise is gray (same on all channels).")
    jpeg_range: Range = Field((30.0, 95.0), description="JPEG quality range (stage 2's range is used by the final JPEG).")

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if any(p < 0 for p in self.resize_prob) or sum(self.resize_prob) <= 0:
            raise ValueError("resize_prob must be non-negative with a positive sum")
        _check_range(self.resize_range, "resize_range", 1e-3)
        if not (self.resize_range[0] <= 1.0 <= self.resize_range[1]):
            raise ValueError(f"resize_range must contain 1.0, got {self.resize_range}")
        _check_range(self.noise_range, "noise_range", 0)
        _check_range(self.poisson_scale_range, "poisson_scale_range", 0)
        _check_range(self.jpeg_range, "jpeg_range", 1, 100)
        return self


class UsmConfig(StrictModel):
    """Unsharp masking (BasicSR USMSharp) of the HQ crop."""

    enabled: bool = Field(True, description="Degrade the USM-sharpened GT (Real-ESRGAN, SeeSR) instead of the plain GT (OSEDiff, StableSR).")
    save_sharpened_gt: bool = Field(False, description="Store the sharpened GT as the HQ image (SeeSR's offline script does).")
    radius: int = Field(50, ge=1, description="Gaussian kernel size (made odd: 50 → 51), sigma derived as in cv2 (sigma=0).")
    weight: float = Field(0.5, ge=0, description="Residual weight.")
    threshold: float = Field(10.0, ge=0, description="Residual threshold on the 0-255 scale for the soft mask.")


class FinalConfig(StrictModel):
    """The last step: 50/50 order of [resize → sinc → JPEG] and [JPEG → resize → sinc], then quantise."""

    final_sinc_prob: float = Field(0.8, ge=0, le=1, description="Probability of the final sinc filter (else identity pulse).")
    sinc_kernel_sizes: list[int] = Field(list(BASICSR_KERNEL_SIZES), description="Kernel sizes of the final sinc filter.")
    order_prob: float = Field(0.5, ge=0, le=1, description="Probability of order (a) resize→sinc→JPEG; else (b) JPEG→resize→sinc.")
    quantize: QuantizePoint = Field(
        "lq",
        description="Where the LQ is rounded to 8-bit levels (docs/methods.md §1.4): lq = at LQ size, before any "
                    "resize back (BasicSR Real-ESRGAN, StableSR); output = after resize_back, at the stored size "
                    "(OSEDiff); none = clamp to [0, 1] only (SeeSR's offline script; saved as 8-bit later). "
                    "Equal when resize_back is none. Legacy true/false mean lq/none.",
    )
    resize_back: Literal["none", "bicubic", "random"] = Field(
        "none", description="Store LQ at HQ size: bicubic (SeeSR sr_bicubic), random area/bilinear/bicubic (OSEDiff), or native 1/scale size."
    )

    @field_validator("quantize", mode="before")
    @classmethod
    def _legacy_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # before the Literal check: true/false were the old values of this key
            return "lq" if value else "none"
        return value


# BasicSR train_realesrnet_x4plus.yml second-stage values (blur_sigma2, second_blur_prob, resize_prob2, ...):
# merged *under* the given fields, so a partial `stage2:` keeps BasicSR's stage-2 values, not stage-1 defaults.
SECOND_STAGE_BASE: dict[str, Any] = {
    "kernel2": {"blur_sigma": (0.2, 1.5)},
    "stage2": {"blur_prob": 0.8, "resize_prob": (0.3, 0.4, 0.3), "resize_range": (0.3, 1.2),
               "noise_range": (1.0, 25.0), "poisson_scale_range": (0.05, 2.5)},
}


class DegradationConfig(StrictModel):
    """Every parameter the Real-ESRGAN second-order degradation reads (docs/methods.md §1.1)."""

    scale: int = Field(4, ge=1, le=8, description="Super-resolution factor; LQ is crop_size/scale.")
    kernel1: KernelConfig = Field(default_factory=KernelConfig, description="First-stage blur kernels.")
    kernel2: KernelConfig = Field(default_factory=KernelConfig, description="Second-stage blur kernels.")
    stage1: StageConfig = Field(default_factory=StageConfig, description="First degradation stage.")
    stage2: StageConfig = Field(default_factory=StageConfig, description="Second degradation stage.")
    usm: UsmConfig = Field(default_factory=UsmConfig, description="Unsharp masking of the GT.")
    final: FinalConfig = Field(default_factory=FinalConfig, description="Final resize / sinc / JPEG / quantise.")
    jpeg_tables: JpegTables = Field(
        "basicsr",
        description="Orientation of the JPEG quantisation tables, for both JPEG steps (docs/methods.md §1.5): "
                    "basicsr = BasicSR DiffJPEG's transposed tables, the Real-ESRGAN/SeeSR training distribution "
                    "(default); libjpeg = natural order, as libjpeg/PIL encode.",
    )

    @model_validator(mode="before")
    @classmethod
    def _second_stage_base(cls, data: Any) -> Any:
        return deep_merge(SECOND_STAGE_BASE, data) if isinstance(data, Mapping) else data
