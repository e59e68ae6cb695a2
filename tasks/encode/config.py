"""Typed config of the ``encode_latents`` step (Ray Data actor pool)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN


class EncodeConfig(StrictModel):
    """Latent pre-encoding on a Ray cluster: local by default, any cluster address when configured."""

    ray_address: str | None = Field(None, description="Ray cluster address (host:port, 'auto', ray://…); None = a local cluster sized to this machine.")
    num_actors: int = Field(1, ge=1, description="Encoder actors (each holds the VAE and the teacher).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (its num_gpus); > 0 runs the actors on cuda. 0 on CPU clusters.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="Device of the actors' models: auto | cpu | cuda | cuda:N; null = cuda when gpus_per_actor > 0, else run.device.")
    shared_filesystem: bool = Field(False, description="With ray_address and a local-disk store: the store path is a shared mount (NFS, …) on every node.")
    threads_per_actor: int = Field(1, ge=1, description="torch threads inside an actor (fixed so results do not depend on placement).")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass inside a shard.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Storage dtype of the cached latents.")
    seed: int = Field(0, description="Seed of posterior samples (latent_mode 'sample'), per pair.")
    teacher_output: bool = Field(True, description="Also cache the teacher's restored latent z0 = teacher(z_LQ).")

    # Where and how wide the work runs; never what it computes, so kept out of the cache key.
    PLACEMENT: ClassVar[frozenset[str]] = frozenset({"ray_address", "num_actors", "cpus_per_actor", "gpus_per_actor",
                                                     "device", "shared_filesystem"})

    def compute_settings(self) -> dict:
        """The fields that change the cached latents (everything but placement)."""
        return self.model_dump(mode="json", exclude=set(self.PLACEMENT))
