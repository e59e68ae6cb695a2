"""The torch intra-op thread count of a compute step, set by the step itself.

A float reduction split over 1 or 2 threads sums in a different order, so a step's output bits depend on the
thread count it ran with. ``torch.set_num_threads`` is part per-thread (OpenMP's ICV) and part process-wide
(the default new threads start with, MKL), so a step that did not set it inherited whatever an earlier step
left behind: a resumed run — where degradation was a cache hit and never touched the setting — trained the
teacher with 2 threads where the uninterrupted run had used 1, and ended with other weights. Every task that
computes in the driver process therefore calls ``use_threads`` first, in the thread that computes."""

from __future__ import annotations

import os

from srcompress.infra.context import RunContext


def core_budget() -> int:
    """Cores this process's torch threads may use: ``OMP_NUM_THREADS`` when set — how batch schedulers and
    shared hosts cap a process, and what the test suite sets per xdist worker so that two tests never run
    four compute threads on two cores — else the cores the process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for(ctx: RunContext, workers: int = 1) -> int:
    """``run.torch_threads`` when set, else the core budget shared evenly by the step's ``workers``."""
    return ctx.torch_threads or max(1, core_budget() // max(1, workers))


def ray_task_threads(ctx: RunContext) -> int:
    """A Ray task holds one CPU: ``run.torch_threads`` when set, else 1 (results independent of placement)."""
    return ctx.torch_threads or 1


def set_threads(n: int) -> int:
    """Set this thread's (and new threads') torch intra-op count to ``n`` (a no-op when it already is)."""
    import torch  # here, not at module level: the flow imports this module before any step computes

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def use_threads(ctx: RunContext, workers: int = 1) -> int:
    """Set the count for a step with ``workers`` side by side in this process."""
    return set_threads(threads_for(ctx, workers))
