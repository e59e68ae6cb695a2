"""What every flow does first: resolve its config parameter and build the run context."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from srcompress.config import SrConfig, load_config, preflight
from srcompress.infra.config import redact
from srcompress.infra.context import RunContext


# Full configs handed to a flow started in this process, by opaque reference. Flow parameters are stored by
# Prefect (its database, the UI): they carry only the redacted config and this reference, never a secret.
_RESOLVED: dict[str, SrConfig] = {}


def register(cfg: SrConfig) -> tuple[dict[str, Any], str]:
    """(redacted config dict for display, reference the flow resolves in-process to the full config)."""
    ref = uuid.uuid4().hex
    _RESOLVED[ref] = cfg
    return redact(cfg.model_dump(mode="json")), ref


def resolve(config: dict[str, Any] | str, workdir: str, overrides: list[str] | None = None,
            config_ref: str | None = None) -> tuple[SrConfig, RunContext]:
    """``config_ref`` (CLI / in-process callers): the registered full config; else ``config``: a YAML path /
    preset + overrides (deployments: secrets come from the environment and the AWS chain), or a config dict."""
    if config_ref is not None:
        if config_ref not in _RESOLVED:
            raise ValueError("config_ref is not known in this process (it is never persisted); start the flow with "
                             "a YAML config path and give secrets through the environment")
        cfg = _RESOLVED[config_ref]
    else:
        cfg = SrConfig.model_validate(config) if isinstance(config, dict) else load_config(config, overrides)
    preflight(cfg)  # deployments reach the flow without the CLI: check devices and folders here too
    ctx = RunContext(workdir=str(Path(workdir).resolve()), store=cfg.store, tracking=cfg.tracking,
                     torch_threads=cfg.run.torch_threads, device=cfg.run.device,
                     ray_address=cfg.run.ray_address)
    return cfg, ctx


def has_holdout(cfg: SrConfig) -> bool:
    return bool(cfg.data.held_out or cfg.data.held_out_fraction)


def reap_stale(tracker) -> None:
    """Before a new pipeline run: runs a killed process left RUNNING become KILLED (MLflow) / Crashed (Prefect)."""
    from prefect import get_run_logger

    from srcompress.infra.orchestration import mark_flow_runs_crashed

    stale = tracker.reap_stale_runs()
    if stale:
        ids = [s["prefect_flow_run_id"] for s in stale if s.get("prefect_flow_run_id")]
        n = mark_flow_runs_crashed(ids, "the process running this flow was killed")
        get_run_logger().warning("marked %d MLflow run(s) KILLED and %d Prefect flow run(s) Crashed, left running by "
                                 "dead processes: %s", len(stale), n, ", ".join(s["run_id"] for s in stale))
