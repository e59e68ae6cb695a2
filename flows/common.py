"""What every flow does first: resolve its config parameter and build the run context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srcompress.config import SrConfig, load_config
from srcompress.infra.context import RunContext


def resolve(config: dict[str, Any] | str, workdir: str, overrides: list[str] | None = None) -> tuple[SrConfig, RunContext]:
    """``config``: a resolved config dict, or (deployments, prefect.yaml) a YAML path / preset + overrides."""
    cfg = SrConfig.model_validate(config) if isinstance(config, dict) else load_config(config, overrides)
    ctx = RunContext(workdir=str(Path(workdir).resolve()), store=cfg.store, tracking=cfg.tracking,
                     torch_threads=cfg.run.torch_threads)
    return cfg, ctx
