"""Ray cluster access: join a configured cluster, or start a local one for the duration of a step.

On this class of machine: the dashboard is off (it costs seconds and a port), token auth is disabled for
loopback clusters (``RAY_AUTH_MODE=disabled``, docs/stack.md), and a cluster we started is shut down
when the step ends so its cores go back to the rest of the flow.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


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
