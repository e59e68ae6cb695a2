"""Efficiency of a model at a given input size: latency, MACs, parameters, peak memory.

Speed claims in this field are often measured badly (methods.md §4: warm-up, I/O, precision), so the
protocol is fixed and recorded with the numbers:

- **latency**: ``warmup`` untimed calls, then the median of ``reps`` timed calls under ``torch.no_grad()``,
  inputs pre-loaded (no I/O), with the torch thread count recorded;
- **MACs**: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 (one multiply-add = 2 FLOPs);
- **params**: every parameter of the module;
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak process-RSS increase over the
  call, sampled every millisecond by a background thread (an upper-bound-ish estimate that includes the
  allocator's caching; recorded as such).

    stats = measure(model, torch.rand(1, 3, 512, 512))
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class Efficiency:
    latency_ms: float
    latency_p90_ms: float
    macs: int
    params: int
    peak_mem_mb: float
    memory_method: str
    threads: int
    warmup: int
    reps: int
    input_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops() // 2)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda.max_memory_allocated"
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with torch.no_grad():
            fn()
        peak[0] = max(peak[0], _rss_mb())
    finally:
        stop.set()
        t.join()
    return max(0.0, peak[0] - base), "rss-delta-1kHz"


def measure(model: nn.Module | Callable[[Tensor], object], example: Tensor, warmup: int = 2, reps: int = 10) -> Efficiency:
    """Measure ``model(example)`` with the fixed protocol above."""
    device = example.device
    call = (lambda: model(example))  # noqa: E731
    with torch.no_grad():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    mem, method = peak_memory_mb(call, device)
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else 0
    return Efficiency(latency_ms=statistics.median(times), latency_p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
                      macs=count_macs(call), params=params, peak_mem_mb=mem, memory_method=method,
                      threads=torch.get_num_threads(), warmup=warmup, reps=reps, input_shape=tuple(example.shape))
