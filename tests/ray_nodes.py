"""A private multi-node Ray cluster on loopback for tests: every node a ``ray start`` process of its own.

Each node gets its own process session, free ports and a private ``--temp-dir``, so nothing is shared with
another Ray on this machine (a developer's, another test worker's). ``ray stop`` kills every Ray on the host
(it has no temp-dir filter), so it is never used: the cluster is ended by pid — every process in the
``ray start`` process groups or naming the cluster's temp dir, and their descendants (Ray workers have their
own process groups), SIGTERM then SIGKILL.

    with private_cluster(tmp_path, workers=1) as cluster:
        run_pipeline(load_config("tiny", [f"run.ray_address={cluster.address}", ...]), ...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from tests.conftest import free_ports

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


@dataclass
class Cluster:
    address: str
    temp_dir: str
    head_pgid: int
    worker_pgids: list[int] = field(default_factory=list)

    @property
    def pgids(self) -> set[int]:
        return {self.head_pgid, *self.worker_pgids}


def ray_start(args: list[str], env: dict, log: Path) -> int:
    """``ray start …`` in a new session; returns its pid (= the process group its daemons keep)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    with open(log, "ab") as out:
        proc = subprocess.Popen([ray_bin, "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        rc = proc.wait(180)
    if rc != 0:
        raise RuntimeError(f"ray start {' '.join(args[:2])} failed ({rc}):\n{log.read_text()[-3000:]}")
    return proc.pid


def _agent_ports(ports: list[int]) -> list[str]:
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port")
    return [a for flag, port in zip(flags, ports, strict=True) for a in (flag, str(port))]


def cluster_processes(pgids: set[int], temp_dir: str) -> dict[int, psutil.Process]:
    """The processes this cluster's ``ray start`` calls left behind, and their descendants (never ourselves)."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    family: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid in me:
                continue
            if os.getpgid(p.pid) in pgids or any(temp_dir in a for a in (p.info["cmdline"] or [])):
                family[p.pid] = p
                family.update({c.pid: c for c in p.children(recursive=True) if c.pid not in me})
        except (psutil.Error, ProcessLookupError):
            continue
    return family


def stop_cluster(pgids: set[int], temp_dir: str) -> None:
    family = cluster_processes(pgids, temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in family.values():
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        # a few seconds of grace: some Ray daemons wait out their own shutdown timers on SIGTERM (15 s of
        # teardown measured); a test cluster has nothing to flush, SIGKILL after that is safe
        _, alive = psutil.wait_procs(list(family.values()), timeout=3)
        family = {p.pid: p for p in alive}
        if not family:
            break


@contextlib.contextmanager
def private_cluster(log_dir: Path, workers: int = 1, cpus: int = 1) -> Iterator[Cluster]:
    """A head and ``workers`` worker nodes of ``cpus`` CPUs each; stopped (by pid) on exit."""
    # Short: Ray's unix sockets live in the temp dir and AF_UNIX paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="srt-", dir="/tmp")
    env = dict(os.environ, **ENV)
    # every port of every node chosen at once, all distinct (one reused port and a node refuses to start)
    port, dash, client, *agents = free_ports(3 + 4 * (1 + workers))
    node_ports = [agents[i:i + 4] for i in range(0, len(agents), 4)]  # the head's, then each worker's
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--disable-usage-stats",
              "--temp-dir", temp_dir]
    pgids: set[int] = set()
    try:
        head = ray_start(["--head", "--port", str(port), "--include-dashboard", "false", "--dashboard-port",
                          str(dash), "--ray-client-server-port", str(client), *common, *_agent_ports(node_ports[0])],
                         env, log_dir / "ray-head.log")
        pgids.add(head)
        cluster = Cluster(address, temp_dir, head)
        for i in range(workers):
            pgid = ray_start(["--address", address, *common, *_agent_ports(node_ports[i + 1])], env,
                             log_dir / f"ray-worker{i}.log")
            pgids.add(pgid)
            cluster.worker_pgids.append(pgid)
        yield cluster
    finally:
        stop_cluster(pgids, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
