"""What every CLI module shares (``cli``, ``datasets_cli``, ``models_cli``), in a module none of them imports
the others through."""

from __future__ import annotations

import typer


def fail(msg: str, code: int) -> None:
    """One red line on stderr and the exit code (2: a bad request, 3: an unreachable store or server)."""
    typer.secho(msg, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
