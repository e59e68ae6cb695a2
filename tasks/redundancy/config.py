"""Typed config of the ``analyse_redundancy`` step (docs/methods.md §6)."""

from __future__ import annotations

from pydantic import Field, field_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN


class RedundancyConfig(StrictModel):
    """Which calibration pairs, which path grid, and where the scores are computed."""

    calibration_size: int = Field(16, ge=2, description="Pairs drawn (seeded, without replacement) from the latent cache.")
    seed: int = Field(0, description="Seed of the calibration draw.")
    sigmas: list[float] = Field([0.25, 0.5, 0.75, 1.0], min_length=2, description="Grid of σ on the path z_σ = σ·z_LQ + (1−σ)·z_HQ for the PGP-DiffSR scores (increasing, in (0, 1], ending at 1).")
    batch_size: int = Field(4, ge=1, description="Pairs per forward.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N; null = run.device.")

    @property
    def kl_axis(self) -> str:
        """Softmax axis of Ψ_KL (PGP-DiffSR leaves it open; here per token over channels). A fixed convention, not
        a setting (it had one allowed value); recorded with the report as ``softmax_axis``."""
        return "channels"

    @field_validator("sigmas")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if sorted(v) != v or len(set(v)) != len(v) or v[0] <= 0 or v[-1] != 1.0:
            raise ValueError(f"must be strictly increasing in (0, 1] and end at 1.0, got {v}")
        return v
