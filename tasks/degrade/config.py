"""Typed config of the ``degrade`` step: every Real-ESRGAN degradation parameter is a field.

The degradation's own knobs (kernels, stages, USM, final step, JPEG tables) live with the functions that read
them, in ``models/degradations/config.py`` (``DegradationConfig``); they are re-exported here. This module adds
what only the step needs (preset, seed, cropping, batching, sharding) and the preset expansion.

Defaults and the four presets follow BasicSR (``basicsr/data/realesrgan_dataset.py``,
``basicsr/models/realesrgan_model.py``, ``options/train/RealESRGAN/train_realesrnet_x4plus.yml``) and the
variants tabulated in docs/methods.md §1.3:

- ``realesrgan``: the reference; USM-sharpened GT is the degradation input, plain GT is stored; rounded at LQ size.
- ``osediff``: no USM; LQ is resized back to the HQ size with a random mode, then rounded (``quantize: output``).
- ``seesr``: USM on, and the sharpened GT is *stored as* GT; LQ stored as the bicubic ×4 ``sr_bicubic``
  image, clamped (not rounded) before the 8-bit save (``quantize: none``). This is the TSD-SR / TinySR data.
- ``stablesr``: milder parameters (AdcSR's ``config.yml``); raw LQ at 1/4 size, rounded at LQ size.

A preset is a starting point: any field given next to ``preset:`` overrides it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from srcompress.infra.config import ConfigError, deep_merge
from srcompress.models.degradations.config import (  # noqa: F401  (re-exported: existing imports keep working)
    BASICSR_KERNEL_SIZES,
    SECOND_STAGE_BASE,
    DegradationConfig,
    FinalConfig,
    JpegTables,
    KernelConfig,
    KernelName,
    QuantizePoint,
    Range,
    StageConfig,
    UsmConfig,
)

__all__ = ["BASICSR_KERNEL_SIZES", "DEGRADE_PRESETS", "DegradationConfig", "DegradeConfig", "FinalConfig",
           "JpegTables", "KernelConfig", "KernelName", "QuantizePoint", "Range", "StageConfig", "UsmConfig"]


class DegradeConfig(DegradationConfig):
    """The Real-ESRGAN second-order degradation step."""

    preset: Literal["realesrgan", "osediff", "seesr", "stablesr"] | None = Field(
        None, description="Named parameter set (docs/methods.md §1.3); fields given beside it override it."
    )
    seed: int = Field(0, description="Base seed; each pair is seeded by (seed, source digest, crop index) only.")
    crop_size: int = Field(512, ge=8, description="HQ crop size in pixels (multiple of scale and of 8).")
    crops_per_image: int = Field(1, ge=1, description="Random crops taken from each source image.")
    use_hflip: bool = Field(True, description="Random horizontal flip of the HQ crop (BasicSR use_hflip).")
    batch_size: int = Field(8, ge=1, description="Pairs degraded together in one batched torch call.")
    shard_size: int = Field(32, ge=1, description="Pairs per output shard (unit of caching, fan-out and resume).")

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        # Merge order: the preset, then the user's fields. BasicSR's stage-2 / kernel-2 base values go under
        # both (DegradationConfig._second_stage_base), so a partial `stage2:` keeps BasicSR's stage-2 values.
        if not isinstance(data, dict):
            return data
        name = data.get("preset")
        if name is None:
            return data
        if name not in DEGRADE_PRESETS:
            raise ConfigError(f"degrade.preset: unknown preset {name!r} (known: {', '.join(DEGRADE_PRESETS)})")
        return deep_merge(DEGRADE_PRESETS[name], data)

    @model_validator(mode="after")
    def _check(self) -> DegradeConfig:
        if self.crop_size % self.scale or (self.crop_size // self.scale) < 4:
            raise ValueError(f"crop_size={self.crop_size} must be a multiple of scale={self.scale} with LQ >= 4 px")
        return self

    @property
    def lq_size(self) -> int:
        """Native LQ side in pixels (crop_size / scale), before any ``final.resize_back``."""
        return self.crop_size // self.scale


_REALESRGAN: dict[str, Any] = {"crop_size": 256, "usm": {"enabled": True, "save_sharpened_gt": False},
                               "final": {"quantize": "lq", "resize_back": "none"}}

DEGRADE_PRESETS: dict[str, dict[str, Any]] = {
    # Real-ESRGAN x4plus: dataset crop 400 then paired crop 256; we crop 256 directly (no second crop).
    # Rounded at LQ size as the last step (realesrgan_model.py feed_data).
    "realesrgan": _REALESRGAN,
    # OSEDiff dataloaders/realesrgan.py: USM commented out; LQ resized back to 512 (random mode), then rounded.
    "osediff": {"crop_size": 512, "usm": {"enabled": False, "save_sharpened_gt": False},
                "final": {"quantize": "output", "resize_back": "random"}},
    # SeeSR utils_data/make_paired_data.py (TSD-SR / TinySR data): USM GT saved as GT, clamp (no round),
    # LQ saved as sr_bicubic at 512.
    "seesr": {"crop_size": 512, "usm": {"enabled": True, "save_sharpened_gt": True},
              "final": {"quantize": "none", "resize_back": "bicubic"}},
    # StableSR / AdcSR config.yml: milder blur, noise and JPEG; no USM; raw 1/4 LQ, rounded at LQ size.
    "stablesr": {
        "crop_size": 512, "usm": {"enabled": False, "save_sharpened_gt": False},
        "kernel1": {"blur_sigma": (0.2, 1.5), "betag_range": (0.5, 2.0), "betap_range": (1.0, 1.5)},
        "kernel2": {"blur_sigma": (0.2, 1.0), "betag_range": (0.5, 2.0), "betap_range": (1.0, 1.5)},
        "stage1": {"resize_range": (0.3, 1.5), "noise_range": (1.0, 15.0), "poisson_scale_range": (0.05, 2.0),
                   "jpeg_range": (60.0, 95.0)},
        "stage2": {"blur_prob": 0.5, "resize_prob": (0.3, 0.4, 0.3), "resize_range": (0.6, 1.2),
                   "noise_range": (1.0, 12.0), "poisson_scale_range": (0.05, 1.0), "jpeg_range": (60.0, 100.0)},
        "final": {"quantize": "lq", "resize_back": "none"},
    },
}
