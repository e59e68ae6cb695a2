"""The run watchdog: processes started by a process that is SIGKILLed die with it (and would not without it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from srcompress.infra.supervise import GRACE_S, POLL_S

pytestmark = pytest.mark.reliability

PARENT = """
import subprocess, sys, time
from srcompress.infra.supervise import start_watchdog
start_watchdog()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _orphan_after_kill(env: dict[str, str], watched: bool = True) -> psutil.Process:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    child = psutil.Process(int(parent.stdout.readline()))
    if watched:
        _wait_for_a_poll_after(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


def _wait_for_a_poll_after(parent: int) -> None:
    """The watchdog is up and idle in its poll loop (imports done), then two poll intervals more: it has taken a
    snapshot since the child (already running) started. Tied to the watchdog's own POLL_S, not a guess."""
    dog = None
    while dog is None or dog.status() == psutil.STATUS_RUNNING:
        dog = dog or next((p for p in psutil.Process(parent).children()
                           if "srcompress.infra.supervise" in " ".join(p.cmdline())), None)
        time.sleep(POLL_S / 10)
    time.sleep(2 * POLL_S)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_children_of_a_killed_run_are_ended():
    child = _orphan_after_kill(dict(os.environ))
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


def test_without_the_watchdog_they_would_survive():
    child = _orphan_after_kill(dict(os.environ, SRCOMPRESS_NO_WATCHDOG="1"), watched=False)
    try:
        time.sleep(GRACE_S + 2 * POLL_S)  # longer than a watchdog would take to end it (SIGTERM, then the grace)
        assert _alive(child)  # the failure mode the watchdog exists for
    finally:
        child.kill()
