"""Nothing left behind: a watchdog that ends every process a CLI run started once the CLI is gone, even after
``kill -9`` (which no handler inside the CLI can catch).

    stop = start_watchdog()        # at CLI start: spawns `python -m srcompress.infra.supervise <pid>`
    ...                            # Prefect's embedded server, Ray's GCS / raylet / workers start as descendants
    stop()                         # normal exit: the watchdog cleans up whatever is left and exits

The watchdog runs in its own session (a signal to the CLI's process group does not reach it) and learns of
the CLI's death from its stdin pipe reaching EOF — the kernel closes the pipe when the CLI dies, however it
dies. While the CLI lives, it records the CLI's descendants every ``POLL_S`` (pid + start time, so a reused
pid is never killed); when the CLI is gone it sends SIGTERM to the recorded processes still alive, waits
``GRACE_S``, then SIGKILLs the survivors. Orphans re-parented to init are therefore found even though they
are no longer the CLI's children.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Callable

POLL_S = 0.5
GRACE_S = 5.0


def start_watchdog(pid: int | None = None) -> Callable[[], None]:
    """Start the watchdog for ``pid`` (default: this process); returns the function that stops it cleanly."""
    if os.environ.get("SRCOMPRESS_NO_WATCHDOG") == "1":  # e.g. under a supervisor that already does this
        return lambda: None
    proc = subprocess.Popen([sys.executable, "-m", "srcompress.infra.supervise", str(pid or os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)

    def stop() -> None:
        try:
            proc.stdin.close()  # EOF: clean up now rather than at interpreter exit
            proc.wait(timeout=GRACE_S + 5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    return stop


def _snapshot(root) -> dict[int, float]:
    import psutil

    out = {}
    try:
        for child in root.children(recursive=True):
            try:
                out[child.pid] = child.create_time()
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _alive(pids: dict[int, float]) -> list:
    import psutil

    procs = []
    for pid, started in pids.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.Error:
            continue
    return procs


def watch(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    seen: dict[int, float] = {}
    while True:
        seen.update(_snapshot(root))
        seen.pop(os.getpid(), None)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the CLI closed the pipe or died
        if not root.is_running():
            break
    seen.pop(os.getpid(), None)  # the watchdog is itself one of the CLI's children
    procs = _alive(seen)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in survivors:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
