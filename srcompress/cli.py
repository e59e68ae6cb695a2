"""Command line: ``srcompress run`` (the DAG), ``srcompress evaluate``, ``srcompress config show``, ``srcompress assets``.

    srcompress run --config configs/tiny.yaml --workdir runs/tiny --until degrade --summary runs/tiny/summary.json
    srcompress evaluate --config configs/tiny.yaml --data ~/photos --models bicubic,teacher --summary S.json
    srcompress config show --config configs/tiny.yaml --set degrade.crop_size=64
    srcompress assets fetch
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
assets_app = typer.Typer(no_args_is_help=True, help="Offline metric assets (NIQE parameters).")
app.add_typer(assets_app, name="assets")

ConfigOpt = typer.Option(..., "--config", "-c", help="YAML config file or preset name (configs/<name>.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable).")


def _fail(msg: str, code: int) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load(config: str, overrides: list[str] | None, machine: bool = True):
    """Load and validate; ``machine`` also checks devices and local folders — all before any work starts."""
    from srcompress.config import load_config, preflight
    from srcompress.infra.config import ConfigError

    try:
        cfg = load_config(config, overrides)
        if machine:
            preflight(cfg)
        return cfg
    except ConfigError as exc:
        _fail(str(exc), 2)


@config_app.command("show")
def config_show(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
                docs: bool = typer.Option(False, "--docs", help="Also list every key with its description.")) -> None:
    """Print the resolved config (secrets redacted) and its hash."""
    from srcompress.config import SrConfig
    from srcompress.infra.config import field_docs, redact

    cfg = _load(config, overrides, machine=False)
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

    _watchdog()
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
    _human_summary("srcompress run", result, summary)


def _watchdog() -> None:
    """Every process this run starts (Prefect's embedded server, Ray) ends with it, even on kill -9."""
    import atexit

    from srcompress.infra.supervise import start_watchdog

    atexit.register(start_watchdog())  # registered first, so it runs after Prefect's own exit handlers


def _human_summary(title: str, result: dict, summary: Path | None) -> None:
    """A few lines for a person: what ran, what was cached, where things are, then the table itself.
    The full machine-readable record goes to ``--summary``."""
    outcomes = result.get("outcomes", {})
    ran = sum(1 for v in outcomes.values() if v == "ran")
    typer.echo(f"{title}: {len(outcomes)} steps, {ran} ran, {len(outcomes) - ran} cached")
    for name, outcome in outcomes.items():
        typer.echo(f"  {name:<20s} {outcome}")
    typer.echo(f"store:  {result['store']}")
    typer.echo(f"MLflow: {result['tracking_uri']} (experiment {result['experiment_id']}, "
               f"run {result['parent_run_id']})")
    if result.get("table"):
        typer.echo(f"table:  {result['table']}\n")
        typer.echo(Path(result["table"]).read_text().split("\n## ")[0].rstrip())
    if summary:
        typer.echo(f"\nsummary: {summary}")


@app.command()
def evaluate(config: str = ConfigOpt, data: Optional[str] = typer.Option(None, help="HR folder, paired folder (hr/ + lr/), LR-only folder, pairs manifest .json, or s3:// prefix."),
             models: Optional[str] = typer.Option(None, help="Comma-separated: bicubic,teacher (bicubic is always included)."),
             workdir: Optional[Path] = typer.Option(None, help="Work dir (default runs/<run.name>)."),
             summary: Optional[Path] = typer.Option(None, help="Write the evaluation summary JSON here."),
             list_metrics: bool = typer.Option(False, "--list-metrics", help="List metrics and whether they can run here."),
             overrides: Optional[list[str]] = SetOpt) -> None:
    """Evaluate bicubic and the requested models on a dataset: metrics, efficiency, grids, MLflow records."""
    extra = [f"evaluate.models={json.dumps([m.strip() for m in models.split(',') if m.strip()])}"] if models else []
    cfg = _load(config, list(overrides or []) + extra, machine=not list_metrics)
    if list_metrics:
        _list_metrics(cfg)
        return
    if not data:
        _fail("--data is required (a folder, a pairs manifest .json, or an s3:// prefix)", 2)
    if not data.startswith("s3://") and not Path(data).expanduser().exists():
        _fail(f"--data {data}: no such file or folder", 2)
    workdir = (workdir or Path("runs") / cfg.run.name).resolve()
    from srcompress.infra.orchestration import configure_prefect

    _watchdog()
    configure_prefect(workdir)
    from srcompress.flows.evaluate import run_evaluation
    from srcompress.infra.store import StoreError

    try:
        result = run_evaluation(cfg, workdir, data if data.startswith("s3://") else str(Path(data).expanduser().resolve()),
                                summary=summary)
    except StoreError as exc:
        _fail(f"artifact store error: {exc}", 3)
    _human_summary("srcompress evaluate", result, summary)


def _list_metrics(cfg) -> None:
    from srcompress.models.iqa import MetricUnavailable, build_metric, metric_names
    from srcompress.tasks.evaluate.step import metric_env

    env = metric_env(cfg.evaluate)
    for name in metric_names():
        try:
            m = build_metric(name, env)
            typer.echo(f"{name:10s} ok  ({m.info.mode}, {'lower' if m.info.lower_better else 'higher'} is better, {m.info.backend})")
        except MetricUnavailable as exc:
            typer.echo(f"{name:10s} {exc}")


@assets_app.command("fetch")
def assets_fetch() -> None:
    """Fetch the official NIQE parameters from the basicsr sdist (package registry; sha256-pinned)."""
    from srcompress.infra.assets import AssetUnavailable, fetch_niqe_params

    try:
        typer.echo(f"niqe: {fetch_niqe_params()}")
    except AssetUnavailable as exc:
        _fail(str(exc), 4)


@assets_app.command("show")
def assets_show() -> None:
    """Where each offline asset lives and whether it is present."""
    from srcompress.infra.assets import status

    for s in status():
        typer.echo(f"{s.name}: {'present' if s.present else 'missing'} at {s.path} (source: {s.source})")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
