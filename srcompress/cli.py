"""Command line: ``srcompress run`` (the DAG) and ``srcompress config show``.

    srcompress run --config configs/tiny.yaml --workdir runs/tiny --until degrade --summary runs/tiny/summary.json
    srcompress config show --config configs/tiny.yaml --set degrade.crop_size=64
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Compress one-step diffusion SR teachers.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")

ConfigOpt = typer.Option(..., "--config", "-c", help="YAML config file or preset name (configs/<name>.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable).")


def _fail(msg: str, code: int) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load(config: str, overrides: list[str] | None):
    from srcompress.config import load_config
    from srcompress.infra.config import ConfigError

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)


@config_app.command("show")
def config_show(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
                docs: bool = typer.Option(False, "--docs", help="Also list every key with its description.")) -> None:
    """Print the resolved config (secrets redacted) and its hash."""
    from srcompress.config import SrConfig
    from srcompress.infra.config import field_docs, redact

    cfg = _load(config, overrides)
    typer.echo(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, default_flow_style=None).rstrip())
    typer.echo(f"# config hash: {cfg.config_hash()}")
    for section in SrConfig.model_fields:
        typer.echo(f"# {section} hash: {getattr(cfg, section).config_hash()}")
    if docs:
        for key, text in field_docs(SrConfig).items():
            typer.echo(f"# {key}: {text}")


@app.command()
def run(config: str = ConfigOpt, workdir: Optional[Path] = typer.Option(None, help="Work dir (default runs/<run.name>)."),
        until: Optional[str] = typer.Option(None, help="Stop after this step."),
        summary: Optional[Path] = typer.Option(None, help="Write the run summary JSON here."),
        overrides: Optional[list[str]] = SetOpt) -> None:
    """Run the compression DAG on a config."""
    cfg = _load(config, overrides)
    workdir = (workdir or Path("runs") / cfg.run.name).resolve()
    from srcompress.infra.orchestration import configure_prefect

    configure_prefect(workdir)  # before prefect is imported
    from srcompress.config import STEPS
    from srcompress.flows.compress import run_pipeline
    from srcompress.infra.store import StoreError

    if until is not None and until not in STEPS:
        _fail(f"--until must be one of: {', '.join(STEPS)}", 2)
    try:
        result = run_pipeline(cfg, workdir, until=until, summary=summary)
    except StoreError as exc:
        _fail(f"artifact store error: {exc}", 3)
    steps = result["steps"]
    typer.echo(json.dumps({"parent_run_id": result["parent_run_id"],
                           "steps": {k: {"digest": v["digest"], "uri": v["uri"], "counts": v["counts"]}
                                     for k, v in steps.items()}}, indent=2))
    if summary:
        typer.echo(f"summary: {summary}")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
