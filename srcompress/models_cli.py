"""``srcompress models``: the registered students — list versions, promote one, roll an alias back.

    srcompress models list [NAME] -c configs/tiny.yaml        # versions, aliases, gate decision, headline metrics
    srcompress models promote srcompress-student 3 --reason "passed the A/B test"
    srcompress models rollback srcompress-student            # champion → the version it replaced

The tracking server comes from ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the config's tracking
section (its default sqlite db under the work dir). Every move is recorded: the registered model's tag
``srcompress.alias_history.<alias>`` (version, previous version, how, reason, time, user) and the version's
``alias.<alias>.set_by``; the register step's gate writes to the same history, so a rollback can undo an
automatic promotion too (``infra/registry.py``).

Exit codes: 2 bad request (no tracking URI, unknown model or version, nothing to roll back to), 3 the tracking
server cannot be reached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from srcompress.cliutil import fail as _fail

app = typer.Typer(no_args_is_help=True, help="Registered students: list versions, promote, roll back.")

UriOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the config's).")
ConfOpt = typer.Option(None, "--config", "-c", help="Config whose tracking settings (and registry.champion_alias) to use.")
WorkOpt = typer.Option(None, "--workdir", help="Work dir of the config's default sqlite db (default runs/<run.name>).")
AliasOpt = typer.Option(None, "--alias", help="The alias to move (default: the config's registry.champion_alias, else champion).")


def _config(config: str | None):
    if not config:
        return None
    from srcompress.cli import _load

    return _load(config, None, machine=False)


def tracking_uri_for(what: str, tracking_uri: str | None, cfg, workdir: Path | None) -> str:
    """The tracking URI a read-side command uses: the flag, the environment, then the config's."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and cfg is not None:
        from srcompress.infra.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(cfg.tracking, workdir or Path("runs") / cfg.run.name)
    if uri is None:
        _fail(f"{what}: no tracking URI (give --tracking-uri, set MLFLOW_TRACKING_URI, or --config)", 2)
    return uri  # type: ignore[return-value]


def _call(what: str, uri: str, fn, *args):
    """Run one registry request; its errors become clear messages and exit codes (never a traceback)."""
    from srcompress.infra import registry
    from srcompress.infra.config import redact

    try:
        return fn(*args)
    except registry.RegistryError as exc:
        _fail(f"{what}: {exc}", 2)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower():
            _fail(f"{what}: {text.splitlines()[0][:300]}", 2)
        _fail(f"{what}: {redact(uri, 'uri')}: {text.splitlines()[0][:300]}", 3)


@app.command("list")
def list_cmd(name: Optional[str] = typer.Argument(None, help="Registered model (default: every model on the server)."),
             tracking_uri: Optional[str] = UriOpt, config: Optional[str] = ConfOpt, workdir: Optional[Path] = WorkOpt,
             as_json: bool = typer.Option(False, "--json", help="Print the versions as JSON.")) -> None:
    """Versions, newest first: aliases, the promotion gate's decision, creation time, headline metrics."""
    from srcompress.infra import registry

    uri = tracking_uri_for("models list", tracking_uri, _config(config), workdir)
    rows = _call("models list", uri, registry.list_versions, uri, name)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo("no registered versions")
        return
    for r in rows:
        metrics = " ".join(f"{k}={v}" for k, v in sorted(r["metrics"].items()) if k.count(".") == 1)[:120]
        typer.echo(f"{r['name']} v{r['version']}  [{', '.join(r['aliases']) or '-'}]  gate={r['gate'] or '-'}  "
                   f"{r['created']}  run={r['run_id'][:12]}  {metrics}")


def _alias(alias: str | None, cfg) -> str:
    return alias or (cfg.registry.champion_alias if cfg is not None else "champion")


@app.command()
def promote(name: str = typer.Argument(..., help="Registered model."),
            version: str = typer.Argument(..., help="Version to point the alias at."),
            alias: Optional[str] = AliasOpt,
            reason: str = typer.Option("manual promotion", "--reason", help="Recorded with the move."),
            tracking_uri: Optional[str] = UriOpt, config: Optional[str] = ConfOpt,
            workdir: Optional[Path] = WorkOpt) -> None:
    """Point an alias (default champion) at a version, bypassing the gate; the move is recorded."""
    from srcompress.infra import registry

    if not version.isdigit():
        _fail(f"models promote: version must be a number, got {version!r}", 2)
    cfg = _config(config)
    uri, alias = tracking_uri_for("models promote", tracking_uri, cfg, workdir), _alias(alias, cfg)
    event = _call("models promote", uri, registry.move_alias, uri, name, alias, version, "manual", reason)
    if event is None:
        typer.echo(f"{name}@{alias} already points at version {version}")
    else:
        typer.echo(f"{name}@{alias}: version {event['from'] or '(none)'} → {event['version']} ({reason})")


@app.command()
def rollback(name: str = typer.Argument(..., help="Registered model."), alias: Optional[str] = AliasOpt,
             reason: str = typer.Option("", "--reason", help="Recorded with the move."),
             tracking_uri: Optional[str] = UriOpt, config: Optional[str] = ConfOpt,
             workdir: Optional[Path] = WorkOpt) -> None:
    """Move an alias (default champion) back to the version it pointed at before its current one."""
    from srcompress.infra import registry

    cfg = _config(config)
    uri, alias = tracking_uri_for("models rollback", tracking_uri, cfg, workdir), _alias(alias, cfg)
    event = _call("models rollback", uri, registry.rollback_alias, uri, name, alias, reason)
    typer.echo(f"{name}@{alias}: version {event['from']} → {event['version']} (rollback)")
