"""Helpers for the fault suite: run the real CLI as a separate process, as a user (or a scheduler) would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "srcompress.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus its Prefect settings: the CLI configures its own under the work dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
