"""Typed config of the ``register`` step: the MLflow registered model, its aliases and the promotion gate."""

from __future__ import annotations

from pydantic import Field

from srcompress.infra.config import StrictModel


class GateConfig(StrictModel):
    """When a new version may take the champion alias: not worse than the champion, on the same evaluation set,
    by more than these tolerances."""

    metrics: list[str] = Field(["psnr", "st_lpips", "piqe"], description="Student metrics compared with the champion's (table names).")
    tolerance: dict[str, float] = Field({"psnr": 0.05, "st_lpips": 0.005, "piqe": 1.0}, description="Allowed loss per metric, in the metric's units (missing: 0).")
    retention_tolerance: float = Field(0.05, ge=0, description="Allowed loss of the worst retention (fraction of the teacher's gain) across scored metrics.")


class RegisterConfig(StrictModel):
    """Register the final student as an MLflow model version (pyfunc) with lineage tags; move aliases."""

    enabled: bool = Field(True, description="Run the register step at the end of the DAG.")
    model_name: str = Field("srcompress-student", min_length=1, pattern=r"^[\w.-]+$", description="Registered model name.")
    candidate_alias: str = Field("candidate", pattern=r"^[\w-]+$", description="Alias every new version gets.")
    champion_alias: str = Field("champion", pattern=r"^[\w-]+$", description="Alias a version gets when it passes the gate.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate.")
