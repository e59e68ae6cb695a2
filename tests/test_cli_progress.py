"""The CLI in a pseudo-terminal, as a newcomer sees it: progress lines with loss and ETA while the search runs (600 steps: several of the watcher's 2-s polls on any machine),
and a failing rank's traceback on the terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.upstream import UPSTREAM

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
CLI = str(Path(sys.executable).parent / "srcompress")
SEARCH = UPSTREAM + ["search.steps=600", "search.log_every=5", "search.checkpoint_every=1000", "search.batch_size=2",
                     "search.calibration_size=6", "search.lora_rank=2", "search.lora_alpha=2"]


def _in_pty(args: list[str], timeout: float = 480) -> tuple[int, str]:
    """Run the CLI with a terminal as stdin/stdout/stderr; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env["COLUMNS"] = "200"  # rich wraps a traceback at the terminal's width: keep the lines the test reads whole
    proc = subprocess.Popen([CLI, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the CLI and its children are gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=60)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))



def test_a_terminal_sees_search_progress_with_loss_and_eta(upstream_workdir):
    code, out = _in_pty(["run", "--config", "tiny", "--workdir", str(upstream_workdir), "--until", "search_pruning",
                         *sum((["--set", s] for s in SEARCH), [])])
    assert code == 0, out[-3000:]
    assert "anonymous usage data" not in out  # Prefect's client telemetry is off (infra/orchestration.py)
    lines = re.findall(r"search_pruning\s+(\d+)/600 \((\d+)%\)  loss [-\d.e+]+  \d+:\d\d elapsed(?:, ETA \d+:\d\d)?", out)
    assert lines, out[-3000:]
    assert all(0 < int(done) <= 600 for done, _ in lines) and any(int(done) < 600 for done, _ in lines)
    assert "ETA" in out
    code, quiet = _in_pty(["run", "--config", "tiny", "--workdir", str(upstream_workdir), "--until", "search_pruning",
                           "--no-progress", *sum((["--set", s] for s in SEARCH + ["search.seed=7"]), [])])
    assert code == 0 and not re.search(r"search_pruning\s+\d+/600", quiet), quiet[-2000:]


def test_a_failing_rank_shows_its_traceback_on_the_terminal(upstream_workdir):
    code, out = _in_pty(["run", "--config", "tiny", "--workdir", str(upstream_workdir), "--until", "search_pruning",
                         *sum((["--set", s] for s in SEARCH + ["search.lora_targets=[no_such_module]"]), [])])
    assert code != 0
    assert re.search(r"search-[0-9a-f]+ failed on rank 0", out), out[-3000:]
    # the rank's own frames and error, not only the driver's
    assert re.search(r'File "[^"]*models/pruning/search\.py", line \d+, in add_lora', out), out[-3000:]
    assert "ValueError: none of the LoRA targets ['no_such_module'] exists in the backbone" in out, out[-3000:]
