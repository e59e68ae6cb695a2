"""``srcompress datasets register``: tell a Prefect server that a dataset has landed.

    srcompress datasets register ~/photos/2024-06 --for retrain        # → srcompress.dataset.registered
    srcompress datasets register s3://bucket/evalsets/div2k --for evaluate --name div2k   # → srcompress.evalset.registered

The source is checked first (a folder that exists and holds images — for ``--for evaluate`` also a pairs manifest
``.json`` — or an ``s3://`` prefix listed through the config's store settings); then one event goes to the server at
``PREFECT_API_URL``. prefect.yaml's triggers turn it into a flow run: ``retrain-on-new-dataset`` (payload
``source``) or ``evaluate-on-new-dataset`` (payload ``data``). The Prefect side lives in
``srcompress.infra.orchestration``; docs/deploy.md, "Deployments and events".

Exit codes: 2 bad source / option or no Prefect server to send to, 3 the s3:// source cannot be listed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from srcompress.cliutil import fail as _fail

app = typer.Typer(no_args_is_help=True, help="Register datasets with a Prefect server (triggers deployments).")

# --for → (event, resource kind, payload key the prefect.yaml trigger templates: {{ event.payload.<key> }})
PURPOSES = {"retrain": ("srcompress.dataset.registered", "dataset", "source"),
            "evaluate": ("srcompress.evalset.registered", "evalset", "data")}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _local_listing(src: str, purpose: str) -> tuple[str, list[tuple[str, int, int]]]:
    """(absolute path, [(relative name, size, mtime_ns)] of its images); a pairs manifest counts as one entry."""
    from srcompress.tasks.common.sources import scan_folder
    from srcompress.tasks.evaluate.datasets import IMAGE_EXTS

    path = Path(src).expanduser().resolve()
    if path.is_file() and purpose == "evaluate" and path.suffix.lower() == ".json":
        st = path.stat()
        return str(path), [(path.name, st.st_size, st.st_mtime_ns)]
    if not path.exists():
        _fail(f"{src}: no such folder", 2)
    if not path.is_dir():
        kinds = "a folder of images or a pairs manifest .json" if purpose == "evaluate" else "a folder of images"
        _fail(f"{src}: not a folder (--for {purpose} takes {kinds}, or an s3:// prefix)", 2)
    files, _ = scan_folder(path, IMAGE_EXTS)
    if not files:
        _fail(f"{src}: no images in this folder ({', '.join(sorted(IMAGE_EXTS))})", 2)
    listing = []
    for name, p in files:
        st = p.stat()
        listing.append((name, st.st_size, st.st_mtime_ns))
    return str(path), listing


def _s3_listing(src: str, purpose: str, config: str) -> list[tuple[str, int]]:
    """[(key under the prefix, size)] of the images (or the one pairs manifest) at ``src``, listed with the
    config's store settings (endpoint, AWS credential chain)."""
    from srcompress.config import load_config
    from srcompress.infra.config import ConfigError, redact_text
    from srcompress.infra.store import StoreError
    from srcompress.infra.store.s3 import S3Store
    from srcompress.tasks.evaluate.datasets import IMAGE_EXTS

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    endpoint = (cfg.evaluate.data.endpoint_url if purpose == "evaluate" else cfg.data.endpoint_url) \
        or cfg.store.endpoint_url
    manifest = purpose == "evaluate" and src.lower().endswith(".json")
    root, _, leaf = src.rstrip("/").rpartition("/") if manifest else (src.rstrip("/"), "", "")
    try:
        store = S3Store(root, cfg.store.model_copy(update={"uri": root, "endpoint_url": endpoint}))
        if manifest:
            listing = [(k, n) for k, n in store.list_raw() if k == leaf]
        else:
            listing = [(k, n) for k, n in store.list_raw() if Path(k).suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in k.split("/"))]
    except StoreError as exc:
        _fail(f"{redact_text(src)}: cannot list: {redact_text(str(exc))}", 3)
    except ValueError as exc:  # a malformed s3:// URI
        _fail(f"{redact_text(src)}: {redact_text(str(exc))}", 2)
    if not listing:
        what = "no such pairs manifest" if manifest else f"no images under this prefix ({', '.join(sorted(IMAGE_EXTS))})"
        _fail(f"{redact_text(src)}: {what}", 2)
    return sorted(listing)


@app.command("register")
def register(source: str = typer.Argument(..., help="A local folder of images, an s3://bucket/prefix, or (--for evaluate) a pairs manifest .json."),
             purpose: str = typer.Option("retrain", "--for", help="retrain: srcompress.dataset.registered (retrain-on-new-dataset); evaluate: srcompress.evalset.registered (evaluate-on-new-dataset)."),
             config: str = typer.Option("tiny", "--config", "-c", help="Config whose store / data settings (S3 endpoint) list an s3:// source."),
             name: Optional[str] = typer.Option(None, "--name", help="Stable dataset name: the event's resource is srcompress.<dataset|evalset>.<name> (default: the listing's digest).")) -> None:
    """Check a dataset and emit the event that prefect.yaml's triggers run a deployment on."""
    from srcompress.infra.config import redact_text
    from srcompress.typed import canonical_hash

    if purpose not in PURPOSES:
        _fail(f"--for must be one of: {', '.join(PURPOSES)} (got {purpose!r})", 2)
    if name is not None and not NAME.match(name):
        _fail(f"--name {name!r}: letters, digits, '.', '_' and '-' only (at most 128, not starting with a symbol)", 2)
    event, kind, key = PURPOSES[purpose]
    if source.startswith("s3://"):
        listing = [list(x) for x in _s3_listing(source, purpose, config)]
        where = source
    elif "://" in source:
        _fail(f"{redact_text(source)}: unsupported scheme (a local folder or s3://bucket/prefix)", 2)
    else:
        where, local = _local_listing(source, purpose)
        listing = [list(x) for x in local]
    digest = canonical_hash({"source": where, "files": listing})  # names, sizes (and local mtimes): cheap, no reads
    label = name or (Path(where.rstrip("/")).name if not where.startswith("s3://") else where.rstrip("/").rsplit("/", 1)[-1])
    resource = {"prefect.resource.id": f"srcompress.{kind}.{name or digest[:16]}",
                "prefect.resource.name": label or kind, "srcompress.digest": digest, "srcompress.files": str(len(listing))}
    payload = {key: where, "digest": digest, "files": len(listing)}

    from srcompress.infra.orchestration import (
        PrefectServerError,
        emit_dataset_registered,
        listening_deployments,
        prefect_server_url,
    )

    try:
        url = prefect_server_url()
        event_id = emit_dataset_registered(event, resource, payload)
    except PrefectServerError as exc:
        _fail(str(exc), 2)
    typer.echo(f"{kind} {redact_text(where)}: {len(listing)} file(s), digest {digest[:16]}")
    typer.echo(f"event id: {event_id}")
    typer.echo(f"event: {event} on {resource['prefect.resource.id']} → {redact_text(url)}")
    try:
        runs = listening_deployments(event, resource)
    except Exception as exc:  # the event is sent; this is only a report
        typer.echo(f"will trigger: unknown (could not read the server's automations: {redact_text(str(exc))[:200]})")
        return
    if runs:
        typer.echo(f"will trigger: {', '.join(runs)}")
    else:
        typer.secho(f"will trigger: nothing: no enabled automation on this server expects {event} "
                    "(deploy prefect.yaml: prefect deploy --all)", fg=typer.colors.YELLOW, err=True)
