"""The root config of a pipeline run: one typed section per component.

    srcompress config show --config configs/tiny.yaml

Sections: ``run`` (naming, parallelism), ``store`` (artifact store), ``tracking`` (MLflow), ``data`` (HR
sources), ``degrade`` (Real-ESRGAN pairs), ``teacher`` (bootstrap or import), ``encode`` (Ray latents),
``evaluate`` (metrics, conventions, inference). Each section's hash is its step-config hash; the whole
config's hash identifies the run's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from srcompress.infra.config import StrictModel, deep_merge, load_yaml, parse_overrides, validate
from srcompress.infra.store import StoreConfig
from srcompress.infra.tracking import TrackingConfig
from srcompress.tasks.degrade.config import DegradeConfig
from srcompress.tasks.degrade.sources import DataConfig
from srcompress.tasks.encode.config import EncodeConfig
from srcompress.tasks.evaluate.config import EvaluateConfig
from srcompress.tasks.teacher.config import TeacherConfig

STEPS = ("degrade", "bootstrap_teacher", "encode_latents", "evaluate")  # DAG order; later issues insert theirs


class RunConfig(StrictModel):
    """Naming and parallelism of a pipeline run."""

    name: str = Field("srcompress", min_length=1, description="Run name shown in MLflow and Prefect.")
    max_workers: int = Field(2, ge=1, le=64, description="Prefect task-runner threads for shard fan-out.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per worker; 0 = cores / max_workers.")


class SrConfig(StrictModel):
    """Everything a pipeline run needs."""

    run: RunConfig = Field(default_factory=RunConfig, description="Naming and parallelism.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Artifact store.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    data: DataConfig = Field(default_factory=DataConfig, description="HR image source.")
    degrade: DegradeConfig = Field(default_factory=DegradeConfig, description="Degradation step.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Teacher (bootstrap or import).")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="Latent pre-encoding on Ray.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation: metrics, conventions, inference.")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> SrConfig:
    """YAML file (or preset name) + ``key=value`` overrides → validated ``SrConfig``."""
    raw = load_yaml(path) if path is not None else {}
    if data:
        raw = deep_merge(raw, data)
    raw = deep_merge(raw, parse_overrides(overrides))
    return validate(SrConfig, raw)
