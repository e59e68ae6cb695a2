"""Typed config of the ``encode_latents`` step (Ray Data actor pool)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from srcompress.infra.config import StrictModel


class EncodeConfig(StrictModel):
    """Latent pre-encoding on a Ray cluster: local by default, any cluster address when configured."""

    ray_address: str | None = Field(None, description="Ray cluster address (host:port, 'auto', ray://…); None = a local cluster sized to this machine.")
    num_actors: int = Field(1, ge=1, description="Encoder actors (each holds the VAE and the teacher).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (0 on CPU clusters).")
    threads_per_actor: int = Field(1, ge=1, description="torch threads inside an actor (fixed so results do not depend on placement).")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass inside a shard.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Storage dtype of the cached latents.")
    seed: int = Field(0, description="Seed of posterior samples (latent_mode 'sample'), per pair.")
    teacher_output: bool = Field(True, description="Also cache the teacher's restored latent z0 = teacher(z_LQ).")
