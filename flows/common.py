"""What every flow does first: resolve its config parameter and build the run context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srcompress.config import SrConfig, load_config, preflight
from srcompress.infra.context import RunContext


def resolve(config: dict[str, Any] | str, workdir: str, overrides: list[str] | None = None) -> tuple[SrConfig, RunContext]:
    """``config``: a resolved config dict, or (deployments, prefect.yaml) a YAML path / preset + overrides."""
    cfg = SrConfig.model_validate(config) if isinstance(config, dict) else load_config(config, overrides)
    preflight(cfg)  # deployments reach the flow without the CLI: check devices and folders here too
    ctx = RunContext(workdir=str(Path(workdir).resolve()), store=cfg.store, tracking=cfg.tracking,
                     torch_threads=cfg.run.torch_threads, device=cfg.run.device)
    return cfg, ctx


def has_holdout(cfg: SrConfig) -> bool:
    return bool(cfg.data.held_out or cfg.data.held_out_fraction)
