"""Typed config of the teacher: where it comes from, its conventions, and the tiny bootstrap recipe.

Shared by the teacher step (which produces the teacher) and every step that loads it (encode, evaluate):
the load settings below change what those steps compute, so they are part of their cache keys
(``tasks/common/teachers.py::load_settings``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from srcompress.infra.config import StrictModel
from srcompress.models.teachers.bootstrap_config import BootstrapConfig


class TeacherConfig(StrictModel):
    """Which one-step teacher the pipeline compresses, and its latent conventions."""

    source: str = Field("bootstrap", description="'bootstrap' (train the tiny teacher), a local diffusers-format folder, or a store URI of a published teacher index.")
    kind: Literal["auto", "sd3", "unet", "multistep"] = Field("auto", description="Backbone family; auto = detect transformer/ (sd3), a StableDiffusionUpscalePipeline model_index.json or teacher.json kind (multistep), or unet/ (unet).")
    lora: str | None = Field(None, description="peft LoRA folder merged into the backbone (hashed by content into encode/evaluate keys); null = <teacher>/lora if present; 'none' = no LoRA, even if the folder ships one.")
    latent_mode: Literal["mean", "sample"] | None = Field(None, description="Posterior mean or seeded sample when encoding; None = teacher.json, else mean.")
    use_shift_factor: bool | None = Field(None, description="Apply the VAE shift_factor; None = teacher.json, else false (TSD-SR convention).")
    timestep: float | None = Field(None, description="One-step timestep; None = teacher.json, else 1000 (SD3) / 999 (UNet).")
    steps: int | None = Field(None, ge=1, description="Multi-step teachers: sampling steps; None = teacher.json, else 50.")
    scheduler: Literal["ddim", "ddpm", "dpm"] | None = Field(None, description="Multi-step teachers: sampler instead of the folder's own scheduler class (its noise schedule is kept); None = the folder's.")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="Tiny teacher recipe.")

    @property
    def lq_upsample(self) -> str:
        """How native-size LQ is brought to HQ size before encoding (TSD-SR sr_bicubic). A fixed convention, not
        a setting (it had one allowed value); recorded in the step keys and latent headers that name it."""
        return "bicubic"

    @model_validator(mode="after")
    def _check(self) -> "TeacherConfig":
        if self.source != "bootstrap" and not self.source.strip():
            raise ValueError("source must be 'bootstrap', a folder or a store URI")
        return self
