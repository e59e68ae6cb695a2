"""Helpers for the fault suite: run the real CLI as a separate process, as a user (or a scheduler) would.

Waits follow progress, not wall-clock guesses: a CLI run is given up only when it has printed nothing for
``stall`` seconds (a hung run), however long it takes on a loaded machine; pytest-timeout bounds the test.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "srcompress.cli"]
STALL_S = 300.0  # the longest silence of a healthy run: a step's start-up (Ray, DeepSpeed) on a loaded host


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus its Prefect settings: the CLI configures its own under the work dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(extra)
    return env


def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, "queue.Queue[str | None]"]:
    """The CLI with its merged output fed line by line into a queue (None once the output has ended)."""
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def follow(proc: subprocess.Popen, lines: "queue.Queue[str | None]", stall: float = STALL_S,
           on_line: Callable[[str, list[str]], None] | None = None) -> str:
    """The process's output until it ends (then waits for its exit); kills it and fails if it printed nothing
    for ``stall`` seconds. ``on_line(line, lines_so_far)`` lets a test act on progress (stop a service when a
    step reports its third shard, say)."""
    out: list[str] = []
    last = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() - last > stall:
                proc.kill()
                proc.wait()
                raise AssertionError(f"the CLI printed nothing for {stall:.0f}s:\n" + "".join(out[-40:]))
            continue
        if line is None:
            break
        out.append(line)
        last = time.monotonic()
        if on_line is not None:
            on_line(line, out)
    proc.wait()
    return "".join(out)


def run_cli(*args: str, env: dict[str, str] | None = None, stall: float = STALL_S) -> subprocess.CompletedProcess:
    """Run the CLI to its end; kill it (and fail) only if it printed nothing for ``stall`` seconds."""
    proc, lines = start_cli(*args, env=env)
    text = follow(proc, lines, stall)
    # stdout and stderr are merged (their interleaving is what a user sees): both fields carry it
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, text)
