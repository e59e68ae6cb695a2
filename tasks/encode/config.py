"""Typed config of the ``encode_latents`` step (Ray Data actor pool)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN


class EncodeConfig(StrictModel):
    """Latent pre-encoding on a Ray cluster: local by default, ``run.ray_address`` when configured."""

    num_actors: int = Field(1, ge=1, description="Encoder actors (each holds the VAE and the teacher).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (its num_gpus); > 0 runs the actors on cuda. 0 on CPU clusters.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="Device of the actors' models: auto | cpu | cuda | cuda:N; null = cuda when gpus_per_actor > 0, else run.device.")
    threads_per_actor: int = Field(1, ge=1, description="torch threads inside an actor (fixed so results do not depend on placement).")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass inside a shard.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Storage dtype of the cached latents.")
    seed: int = Field(0, description="Seed of posterior samples (latent_mode 'sample'), per pair.")
    teacher_output: bool = Field(True, description="Also cache the teacher's restored latent z0 = teacher(z_LQ).")
    teacher_steps: Literal["fixed", "adaptive"] = Field("fixed", description="Multi-step teachers: the teacher outputs from the fixed-step sampler, or from AdaDiffSR's adaptive one (needs adaptive.enabled; the steps each region took are cached as 'teacher_steps').")

    # Where and how wide the work runs; never what it computes, so kept out of the cache key.
    PLACEMENT: ClassVar[frozenset[str]] = frozenset({"num_actors", "cpus_per_actor", "gpus_per_actor", "device"})
    MOVED: ClassVar[dict[str, str]] = {"ray_address": "run.ray_address", "shared_filesystem": "run.shared_filesystem"}

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        # One cluster serves every heavy step now: say where the key went instead of "extra inputs".
        for old, new in cls.MOVED.items():
            if isinstance(data, dict) and old in data:
                raise ValueError(f"encode.{old} moved to {new} (one Ray cluster for every heavy step)")
        return data

    def compute_settings(self) -> dict:
        """The fields that change the cached latents (everything but placement)."""
        return self.model_dump(mode="json", exclude=set(self.PLACEMENT))
