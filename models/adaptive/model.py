"""``teacher_adaptive``: a multi-step teacher run with AdaDiffSR's adaptive inference, behind the teacher
interface the upscaler and the evaluation use (``encode`` / ``restore_tile`` / ``decode``).

``restore_tile`` gets the whole latent (``tile`` is None): the adaptive sampler cuts its own sub-regions,
gives each its steps and stitches them (models/adaptive/sampler.py). Every call adds to ``usage``: the UNet
region-evaluations spent, the regions, the regressor calls — the evaluation's FLOPs on its own images, and
``last_map`` keeps the last call's per-region step map.
"""

from __future__ import annotations

import torch
from torch import nn

from srcompress.models.adaptive.dtss import DTSSConfig
from srcompress.models.adaptive.mmle import GainRegressor
from srcompress.models.adaptive.sampler import adaptive_restore
from srcompress.models.teachers.multistep import MultiStepTeacher

Tensor = torch.Tensor


class AdaptiveTeacher(nn.Module):
    kind = "teacher_adaptive"
    tile = None
    tile_overlap = 8

    def __init__(self, teacher: MultiStepTeacher, regressor: GainRegressor | None, dtss: DTSSConfig, region: int,
                 region_overlap: int):
        super().__init__()
        self.teacher, self.regressor, self.dtss = teacher, regressor, dtss
        self.region, self.region_overlap = region, region_overlap
        self.usage = {"regions": 0, "unet_region_evals": 0, "regressor_evals": 0}
        self.last_map: Tensor | None = None
        self.last_steps: Tensor | None = None  # (B, regions) of the last call

    # the teacher's parts, so the upscaler treats this like any teacher
    @property
    def vae(self) -> nn.Module:
        return self.teacher.vae

    @property
    def backbone(self) -> nn.Module:
        return self.teacher.backbone

    @property
    def convention(self):
        return self.teacher.convention

    @property
    def latent_factor(self) -> int:
        return self.teacher.latent_factor

    def encode(self, x01: Tensor, generator=None) -> Tensor:
        return self.teacher.encode(x01, generator)

    def decode(self, z: Tensor) -> Tensor:
        return self.teacher.decode(z)

    @torch.no_grad()
    def restore_tile(self, z_lq: Tensor) -> Tensor:
        z, info = adaptive_restore(self.teacher, z_lq, self.regressor, self.dtss, self.region, self.region_overlap)
        self.usage["regions"] += int(info.steps.numel())
        self.usage["unet_region_evals"] += info.unet_calls
        self.usage["regressor_evals"] += info.regressor_calls
        self.last_map = info.step_map(*z_lq.shape[-2:])
        self.last_steps = info.steps
        return z

    def restore_latent(self, z_lq: Tensor) -> Tensor:
        return self.restore_tile(z_lq)

    def forward(self, lq01: Tensor) -> Tensor:
        return self.decode(self.restore_latent(self.encode(lq01)))

    def mean_steps(self) -> float | None:
        """UNet evaluations per region so far (the fixed sampler: ``teacher.steps``)."""
        return self.usage["unet_region_evals"] / self.usage["regions"] if self.usage["regions"] else None

    def describe(self) -> dict:
        return {**self.teacher.describe(), "kind": self.kind, "intervals": list(self.dtss.intervals),
                "tau": self.dtss.tau, "t_max": self.dtss.t_max, "region": self.region,
                "region_overlap": self.region_overlap, "regressor": self.regressor is not None,
                "mean_steps_per_region": self.mean_steps(), "fixed_steps": self.teacher.steps,
                "regressor_evals": self.usage["regressor_evals"]}
