"""Typed config of AdaDiffSR's adaptive inference (``adaptive``): the step-skip codebook, the MMLE metric set
and the regressor's training (docs/methods.md §12)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN


class AdaptiveConfig(StrictModel):
    """Multi-step teachers only: train the MMLE regressor (step ``train_mmle``) and score ``teacher_adaptive``."""

    enabled: bool = Field(False, description="Run train_mmle (needs a multi-step teacher) so encode/evaluate can use adaptive steps.")
    intervals: list[int] = Field([5, 10, 15, 20], min_length=4, max_length=4, description="DTSS step-skip codebook in training timesteps (AdaDiffSR: 5/10/15/20 over T_max=1000); growth takes the first, stable regions the others by FR gain, saturated regions exit.")
    tau: float = Field(5e-3, gt=0, description="Gain threshold τ of the DTSS labels (AdaDiffSR: 5e-3).")
    t_max: int = Field(1000, ge=2, description="T_max: the training timesteps; NR gains count below T_max / 2.")
    region: int = Field(16, ge=4, description="Sub-region size in latent cells (AdaDiffSR: the model's native 512 px = 64 latents).")
    region_overlap: int = Field(8, ge=0, description="Overlap of sub-regions (stitched with Gaussian weights at the end).")
    fr_weights: dict[str, float] = Field({"psnr": 1.0, "ssim": 1.0, "stlpips": 1.0}, description="ω of the full-reference metrics in R (psnr: dB/10, ssim, stlpips: 1 − distance).")
    nr_weights: dict[str, float] = Field({"piqe": 1.0}, description="ω of the no-reference metrics in R (piqe: −score/100), counted in the second half only.")
    train_regions: int = Field(64, ge=2, description="Training-pair regions whose trajectories give the regressor's targets (a quarter held out for its error).")
    steps: int = Field(300, ge=1, description="Regressor optimisation steps (Adam, cosine LR).")
    lr: float = Field(1e-3, gt=0, description="Regressor learning rate.")
    batch_size: int = Field(64, ge=1, description="Regressor batch (records of one region and step).")
    width: int = Field(32, ge=4, description="Regressor conv width.")
    seed: int = Field(0, description="Seed of region sampling and regressor init.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="Device of the step; null = run.device.")

    NOT_RESULTS: ClassVar[frozenset[str]] = frozenset({"device", "enabled"})

    @model_validator(mode="after")
    def _check(self) -> "AdaptiveConfig":
        if list(self.intervals) != sorted(self.intervals) or self.intervals[0] < 1:
            raise ValueError(f"adaptive.intervals must be increasing positive step sizes, got {self.intervals}")
        if self.region_overlap >= self.region:
            raise ValueError("adaptive.region_overlap must be smaller than adaptive.region")
        bad = set(self.fr_weights) - {"psnr", "ssim", "stlpips"} | set(self.nr_weights) - {"piqe"}
        if bad:
            raise ValueError(f"adaptive: unknown metrics {sorted(bad)} (FR: psnr, ssim, stlpips; NR: piqe)")
        return self

    def dtss(self):
        from srcompress.models.adaptive.dtss import DTSSConfig

        return DTSSConfig(tuple(self.intervals), self.tau, self.t_max)

    def weights(self):
        from srcompress.models.adaptive.mmle import MetricWeights

        return MetricWeights(dict(self.fr_weights), dict(self.nr_weights))
