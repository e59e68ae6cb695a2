"""The run watchdog: processes started by a process that is SIGKILLed die with it (and would not without it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.reliability

PARENT = """
import subprocess, sys, time
from srcompress.infra.supervise import start_watchdog
start_watchdog()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _orphan_after_kill(env: dict[str, str]) -> psutil.Process:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.5)  # let the watchdog record its descendants
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


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
    child = _orphan_after_kill(dict(os.environ, SRCOMPRESS_NO_WATCHDOG="1"))
    try:
        time.sleep(3)
        assert _alive(child)  # the failure mode the watchdog exists for
    finally:
        child.kill()
