"""Efficiency of a model at a given input size: latency, MACs, parameters, peak memory.

Speed claims in this field are often measured badly (docs/methods.md §5: warm-up, I/O, precision), so the
protocol is fixed and recorded with the numbers:

- **device**: the device of the model's parameters (or buffers) when it is an ``nn.Module`` that has any,
  else the example's device. The example is passed as given: the upscalers move their input to the
  model's device themselves;
- **latency**: ``warmup`` untimed calls, then the median of ``reps`` timed calls under ``torch.no_grad()``,
  inputs pre-loaded (no I/O), CUDA synchronised around each call, with the torch thread count recorded.
  Models compared in one run are timed *interleaved* (``measure_many``): round r calls every model once, in
  an order rotated by r, so a machine that slows down or speeds up during the measurement (another process,
  thermal or frequency changes) shifts every model alike instead of whichever was timed then. The spread is
  kept (min, max) and calls slower than median + 3 × 1.4826 × MAD (a robust 3σ) are counted as outliers;
- **MACs**: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 (one multiply-add = 2 FLOPs), attention on
  the math SDPA backend (the counter has no formula for the fused CPU attention kernel);
- **params**: every parameter of the module;
- **peak memory** (one separate call, after the timed ones, so the profiler's overhead is never timed):
  on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call; on CPU the peak of
  live tensor bytes over the call, from ``torch.profiler`` with ``profile_memory=True``: every allocation
  and free of the CPU allocator during the call, in time order, summed; frees of blocks allocated before
  the call are ignored. This counts what the tensors occupy, independent of whether the allocator reuses
  freed memory (a process-RSS delta reads 0 once freed pages are reused), and excludes allocator caching
  and non-tensor memory. The method's name is ``Efficiency.memory_method``.

    stats = measure(model, torch.rand(1, 3, 512, 512))
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

Tensor = torch.Tensor

CPU_MEMORY_METHOD = "torch.profiler live-tensor peak (CPU)"
CUDA_MEMORY_METHOD = "cuda.max_memory_allocated"


@dataclass(frozen=True)
class Efficiency:
    latency_ms: float  # median
    latency_p90_ms: float
    latency_min_ms: float
    latency_max_ms: float
    latency_outliers: int  # timed calls above median + 3 robust σ (kept in min/max and the median)
    macs: int
    params: int
    peak_mem_mb: float | None  # None when it could not be measured; memory_method then says why
    memory_method: str
    threads: int
    warmup: int
    reps: int
    input_shape: tuple[int, ...]
    device: str = "cpu"
    interleaved: bool = False  # timed in rounds together with the other models of its run

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(fn: Callable[[], object]) -> int:
    """MACs of one call. Attention runs on the math SDPA backend while counting: the flop counter has no
    formula for the fused CPU kernel and would count attention as zero."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops() // 2)


def measurement_device(model: nn.Module | Callable[[Tensor], object], example: Tensor) -> torch.device:
    """The model's parameter (or buffer) device for a module that has any, else the example's."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return example.device


def _live_tensor_peak_bytes(prof: torch.profiler.profile) -> int:
    """Peak of the running sum of CPU allocations minus frees recorded by ``prof`` (in time order).

    Frees of blocks allocated before the profiled region are reported by torch as negative sizes too;
    they are matched by pointer and ignored, so they cannot pull the running sum below the call's own
    allocations."""
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    events: list[tuple[int, int, int]] = []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        f = node.extra_fields
        if type(f).__name__ == "_ExtraFields_Allocation" and f.device.type == "cpu":
            events.append((node.start_time_ns, int(f.alloc_size), int(f.ptr)))
    events.sort(key=lambda e: e[0])  # stable: same-timestamp events keep their recorded order
    live: dict[int, int] = {}
    cur = peak = 0
    for _, size, ptr in events:
        if size > 0:
            live[ptr] = live.get(ptr, 0) + size
            cur += size
            peak = max(peak, cur)
        elif ptr in live:
            cur -= live.pop(ptr)
    return peak


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> tuple[float | None, str]:
    """Peak memory of one ``fn()`` call in MiB on ``device``, and the method's name (see module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, CUDA_MEMORY_METHOD
    if device.type != "cpu":
        return None, f"unavailable: no peak-memory method for device {device.type}"
    from torch.profiler import ProfilerActivity, profile

    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return _live_tensor_peak_bytes(prof) / 2**20, CPU_MEMORY_METHOD
    except RuntimeError as exc:  # e.g. another profiler already active in this process
        return None, f"unavailable: torch.profiler failed ({exc})"


def latency_stats(times_ms: list[float]) -> dict[str, float | int]:
    """Median, p90, min, max and the number of robust outliers of a list of timed calls (ms)."""
    t = sorted(times_ms)
    med = statistics.median(t)
    mad = statistics.median(abs(x - med) for x in t)
    limit = med + 3 * 1.4826 * mad
    return {"latency_ms": med, "latency_p90_ms": t[min(len(t) - 1, int(0.9 * len(t)))], "latency_min_ms": t[0],
            "latency_max_ms": t[-1], "latency_outliers": sum(1 for x in t if x > limit) if mad > 0 else 0}


def _timer(model: nn.Module | Callable[[Tensor], object], example: Tensor, device: torch.device) -> Callable[[], float]:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # noqa: E731

    def timed() -> float:
        sync()
        t0 = time.perf_counter()
        model(example)
        sync()
        return (time.perf_counter() - t0) * 1000

    return timed


def measure_many(models: dict[str, nn.Module | Callable[[Tensor], object]], example: Tensor, warmup: int = 2,
                 reps: int = 10) -> dict[str, Efficiency]:
    """Every model with the protocol above, timed interleaved: ``warmup`` untimed calls each, then ``reps``
    rounds in which each model is called once, in an order rotated every round."""
    names = list(models)
    devices = {n: measurement_device(models[n], example) for n in names}
    timers = {n: _timer(models[n], example, devices[n]) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for n in names:
            for _ in range(warmup):
                models[n](example)
        for r in range(reps):
            for n in names[r % len(names):] + names[:r % len(names)]:
                times[n].append(timers[n]())
    out = {}
    for n in names:
        model, device = models[n], devices[n]
        call = (lambda m=model: m(example))  # noqa: E731
        mem, method = peak_memory_mb(call, device)
        params = sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else 0
        out[n] = Efficiency(**latency_stats(times[n]), macs=count_macs(call), params=params, peak_mem_mb=mem,
                            memory_method=method, threads=torch.get_num_threads(), warmup=warmup, reps=reps,
                            input_shape=tuple(example.shape), device=str(device), interleaved=len(names) > 1)
    return out


def measure(model: nn.Module | Callable[[Tensor], object], example: Tensor, warmup: int = 2, reps: int = 10) -> Efficiency:
    """Measure ``model(example)`` alone with the fixed protocol above."""
    return measure_many({"model": model}, example, warmup, reps)["model"]
