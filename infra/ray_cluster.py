"""Ray cluster access: join a configured cluster, or start a local one for the duration of a step.

On this class of machine: the dashboard is off (it costs seconds and a port), token auth is disabled for
loopback clusters (``RAY_AUTH_MODE=disabled``, docs/stack.md), and a cluster we started is shut down
when the step ends so its cores go back to the rest of the flow.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[str]:
    """Yield a short description of the cluster; start a local one when ``address`` is None."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                      configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local" forces a fresh in-process cluster even when `ray start` left one running on this host.
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
        started = True
    try:
        res = ray.cluster_resources()
        yield f"{address or 'local'} ({int(res.get('CPU', 0))} CPUs, {len(ray.nodes())} node(s))"
    finally:
        if started:
            ray.shutdown()


def train_on_ray(loop, config: dict, num_workers: int, use_gpu: bool, name: str, storage: str,
                 address: str | None) -> str:
    """Run ``loop(config)`` on ``num_workers`` Ray Train workers (``TorchTrainer``: one process per rank, the
    torch process group set up for DeepSpeed); raises with the rank's error. Returns the cluster description."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with ray_session(address) as info:
        trainer = TorchTrainer(loop, train_loop_config=config,
                               scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
                               run_config=RunConfig(name=name, storage_path=storage))
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"{name} failed on a rank: {result.error}")
    return info


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
