"""Ray cluster access: join a configured cluster, or start a local one — for one step, or (``ray_scope``,
entered by the flows) for every step of a flow run.

On this class of machine: the dashboard is off (it costs seconds and a port), token auth is disabled for
loopback clusters (``RAY_AUTH_MODE=disabled``, docs/stack.md), and a cluster we started is shut down
when the step — or, inside ``ray_scope``, the flow run — ends.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from typing import Any, Callable, Iterator


# The flow run's Ray (``ray_scope``): scopes entered, and whether a session inside one started Ray.
_SCOPE = {"depth": 0, "started": False}
_LOCK = threading.Lock()


@contextlib.contextmanager
def ray_scope() -> Iterator[None]:
    """One Ray for a whole flow run: inside the scope, the cluster the first step's ``ray_session`` starts (or
    joins) is kept for the following steps and shut down when the outermost scope ends, not after every step.

    Why: starting and stopping a local Ray costs ~4 s per step on 2 cores (GCS, raylet, object store: measured
    2.5 s up, 1.3 s down), about twice that on a loaded host, and a DAG run has up to five Ray steps (encode,
    search, both distillation stages, scoring). An idle local cluster between steps holds memory, not cores."""
    with _LOCK:
        _SCOPE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _SCOPE["depth"] -= 1
            if _SCOPE["depth"] == 0:
                _release_ranks()  # kept for the run's next training step only: never past the run
            if _SCOPE["depth"] == 0 and _SCOPE["started"]:
                import ray  # only when a step started it: a run without Ray steps never imports Ray here

                _SCOPE["started"] = False
                if ray.is_initialized():
                    ray.shutdown()


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, keep_ranks: bool = False) -> Iterator[str]:
    """Yield a short description of the cluster; start a local one when ``address`` is None. A session that
    starts Ray shuts it down when it ends — unless it runs inside ``ray_scope``, which then does.

    Any session but a training launch's (``keep_ranks``) first frees the rank actors the last launch kept: the
    cores they hold are then this step's."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = False
    with _LOCK:  # two steps of one flow (threads) may reach here at once: one of them starts Ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                          configure_logging=False)
            if address:
                ray.init(address=address, **kwargs)
            else:
                # "local" forces a fresh in-process cluster even when `ray start` left one running on this host.
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
            if _SCOPE["depth"]:
                _SCOPE["started"] = True  # the scope shuts it down
            else:
                started = True
        if not keep_ranks:
            _release_ranks()
    try:
        res = ray.cluster_resources()
        yield f"{address or 'local'} ({int(res.get('CPU', 0))} CPUs, {len(ray.nodes())} node(s))"
    finally:
        with _LOCK:
            if not _SCOPE["depth"]:  # no flow run to keep them for
                _release_ranks()
        if started:
            ray.shutdown()


class RankFailed(RuntimeError):
    """A rank of a training launch raised, or its process died; the other ranks were stopped."""


# How long the cluster may take to offer every rank its resources at once before the launch fails clearly
# (Ray Train's worker-group start timeout is 60 s; an autoscaling cluster may need longer).
RANKS_READY_S = 120.0


def train_on_ray(loop, config: dict, num_workers: int, use_gpu: bool, name: str, address: str | None) -> str:
    """Run ``loop(config)`` in ``num_workers`` rank processes on the cluster, the torch process group's
    environment set (``MASTER_ADDR``/``MASTER_PORT`` on rank 0's node, ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``) for ``deepspeed.init_distributed``. Returns the cluster description; raises ``RankFailed``
    with the first failing rank's error, after stopping the others (a rank left waiting in a collective for a
    dead peer would otherwise hang).

    The ranks are Ray actors of one placement group (all-or-nothing: 1 CPU, and 1 GPU with ``use_gpu``, per
    rank, packed), not Ray Train's ``TorchTrainer``: that adds a controller, a preemption watcher and a
    placement-group cleaner process per launch — about 8 s of start-up per training step on 2 cores, measured —
    and nothing this launch uses (the steps checkpoint to the artifact store themselves). With ``use_gpu`` Ray
    gives each rank its own GPU (``CUDA_VISIBLE_DEVICES``), so ``cuda`` is that rank's device.

    Inside a flow run (``ray_scope``) CPU ranks outlive their launch: the run's next launch of the same shape
    (the search, then both distillation stages) reuses the processes, whose process group ``DeepSpeedRank.run``
    reset. A fresh rank spends ~10 s importing torch, diffusers, peft and DeepSpeed on 2 cores — two of the three
    rank start-ups of a DAG run. Any other Ray step, or the run's end, stops the kept ranks and frees their cores.
    GPU ranks start fresh for each launch (a reused CUDA/NCCL process is not tested here)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    shape = (num_workers, use_gpu)
    with ray_session(address, keep_ranks=True) as info:
        pg, actors, places = _kept_ranks(shape)
        kept = False
        try:
            if not actors:
                bundle = {"CPU": 1, **({"GPU": 1} if use_gpu else {})}
                pg = placement_group([dict(bundle) for _ in range(num_workers)], strategy="PACK", name=name)
                ready, _ = ray.wait([pg.ready()], timeout=RANKS_READY_S)
                if not ready:
                    raise RankFailed(f"{name}: the cluster ({info}) did not offer {num_workers} rank(s) of "
                                     f"{bundle} within {RANKS_READY_S:.0f} s")
                rank_cls = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_restarts=0)(DeepSpeedRank)
                actors = [rank_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=i)).remote() for i in range(num_workers)]
                places = ray.get([a.place.remote() for a in actors])
            master_ip, master_port = places[0][1], places[0][2]
            nodes = [p[0] for p in places]
            env = [{"MASTER_ADDR": master_ip, "MASTER_PORT": str(master_port), "RANK": str(i),
                    "WORLD_SIZE": str(num_workers), "LOCAL_RANK": str(nodes[:i].count(nodes[i])),
                    "LOCAL_WORLD_SIZE": str(nodes.count(nodes[i]))} for i in range(num_workers)]
            pending = {a.run.remote(loop, config, e): i for i, (a, e) in enumerate(zip(actors, env))}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                rank = pending.pop(done[0])
                try:
                    ray.get(done[0])
                except Exception as exc:  # a raised error, or the rank's process died (RayActorError)
                    raise RankFailed(f"{name} failed on rank {rank}: {exc}") from exc
            kept = not use_gpu and _keep_ranks(shape, pg, actors)
        finally:
            if not kept:
                _stop(pg, actors)
    return info


# The rank actors of the last training launch, kept for the flow run's next one (``train_on_ray``).
_RANKS: dict[str, Any] = {"owner": None, "shape": None, "pg": None, "actors": []}


def _session_id() -> tuple[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    return ctx.gcs_address, ctx.get_job_id()


def _keep_ranks(shape: tuple, pg, actors: list) -> bool:
    """Keep a finished launch's ranks for the next launch of this shape, inside a flow run only; False (the
    caller stops them) when there is no run to keep them for or another launch's ranks are kept already."""
    with _LOCK:
        if not _SCOPE["depth"] or _RANKS["actors"]:
            return False
        _RANKS.update(owner=_session_id(), shape=shape, pg=pg, actors=list(actors))
        return True


def _kept_ranks(shape: tuple) -> tuple[Any, list, list]:
    """(placement group, actors, their places) kept for a launch of ``shape``, or (None, [], []). Kept ranks of
    another shape are stopped; a kept rank that no longer answers (its process died) means a fresh set."""
    import ray

    with _LOCK:
        owner, kept_shape, pg, actors = _take_kept()
    match = kept_shape == shape
    if not actors or owner != _session_id():  # none, or handles of a Ray session that has ended since
        return None, [], []
    if match:
        try:
            return pg, actors, ray.get([a.place.remote() for a in actors], timeout=60)
        except Exception:  # a dead or stuck rank: start over
            pass
    _stop(pg, actors)
    return None, [], []


def _release_ranks() -> None:
    """Stop the kept rank actors and free their cores (caller holds ``_LOCK``). Handles from a Ray session that
    has ended since are only dropped: their actors ended with it."""
    owner, _, pg, actors = _take_kept()
    if actors:
        import ray

        if ray.is_initialized() and _session_id() == owner:
            _stop(pg, actors)


def _take_kept() -> tuple[Any, Any, Any, list]:
    """(owner, shape, placement group, actors) of the kept ranks, which are no longer kept (caller holds
    ``_LOCK``)."""
    taken = (_RANKS["owner"], _RANKS["shape"], _RANKS["pg"], _RANKS["actors"])
    _RANKS.update(owner=None, shape=None, pg=None, actors=[])
    return taken


def _stop(pg, actors: list) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    for a in actors:
        ray.kill(a)
    if pg is not None:
        remove_placement_group(pg)


class DeepSpeedRank:
    """One training rank (a Ray actor, wrapped by ``train_on_ray``): where it runs, then the training loop."""

    def place(self) -> tuple[str, str, int]:
        """This rank's node id, node IP and a free port there (used when this is rank 0)."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), port

    def run(self, loop, config: dict, env: dict[str, str]):
        """``loop(config)``; if it raises, the rank's last log lines ride on the exception as a note, so they
        reach the driver's terminal with the traceback (the ranks' own output stays in Ray's session logs)."""
        import logging

        os.environ.update(env)
        tail = LogTail()
        root = logging.getLogger()
        level = root.level
        root.addHandler(tail)
        root.setLevel(min(level or logging.WARNING, logging.INFO))  # INFO records reach the tail
        try:
            result = loop(config)
        except BaseException as exc:
            if tail.lines:
                exc.add_note(f"last {len(tail.lines)} log lines of this rank:\n" + "\n".join(tail.lines))
            raise
        finally:
            root.removeHandler(tail)
            root.setLevel(level)
        _reset_process_group()  # only after a clean end: a failed launch stops its ranks
        return result


class LogTail(logging.Handler):
    """The last ``keep`` log records (INFO and above) of a process, formatted, for an error report."""

    def __init__(self, keep: int = 20):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 — a record that cannot be formatted is not worth a failure
            pass


def _reset_process_group() -> None:
    """Leave a rank's process as a fresh one would find it, so the flow run's next launch can reuse it: the torch
    process group destroyed, and DeepSpeed's module-level handles on it dropped (``deepspeed.comm``'s backend,
    whose ``init_distributed`` then builds a new one; the groups cached in ``deepspeed.utils.groups``)."""
    import gc
    import importlib
    import sys

    import torch.distributed as dist

    gc.collect()  # the finished engines (and their hooks on the group) go before the group does
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    comm = sys.modules.get("deepspeed.comm.comm")
    if comm is not None:
        comm.cdb = None
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        importlib.reload(groups)


def map_on_ray(fn: Callable[..., Any], calls: list[tuple], address: str | None, num_cpus: float = 1.0,
               max_retries: int = 2, on_start: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``fn(*args)`` for every ``args`` in ``calls`` as Ray tasks on the cluster; yields ``(i, result)`` in the
    order they finish, so the caller can log progress while the rest still runs.

    ``fn`` must be a module-level function of an installed package (Ray ships it by reference) taking and
    returning small plain values: the data moves through the artifact store, never through Ray's object store.
    A task that raises or whose worker dies is retried ``max_retries`` times; then its error is raised here."""
    import ray

    with ray_session(address) as info:
        if on_start:
            on_start(info)
        remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=True)(fn)
        pending = {remote.remote(*args): i for i, args in enumerate(calls)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)


def where_am_i() -> str:
    """``<node id prefix>/<pid>`` of the calling Ray worker: recorded with each piece of work it did."""
    import ray

    return f"{ray.get_runtime_context().get_node_id()[:12]}/{os.getpid()}"
