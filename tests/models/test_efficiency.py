"""Efficiency protocol: exact MAC counts, parameter counts, latency and memory that respond to the work done."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from srcompress.models.efficiency import (CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, count_macs, latency_stats, measure,
                                          measure_many, measurement_device, peak_memory_mb)
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from srcompress.models.upscalers import Bicubic, DiffusionSR

MIB = 2**20


def _alloc_64mib(x):
    y = torch.ones(16, 1024, 1024)  # 64 MiB of float32, freed on return
    return (y.sum() + x.sum()).item()


def _tiny_upscaler() -> DiffusionSR:
    teacher = tiny_sd3_teacher(tile=32, vae_channels=(32,), vae_norm_groups=1, vae_identity=True, patch_size=4,
                               num_layers=8, heads=2).eval()
    return DiffusionSR(teacher, scale=4, tile=32, tile_overlap=16)


def test_macs_and_params_are_exact_for_known_layers():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 3, 16, 16)
    assert count_macs(lambda: conv(x)) == 8 * 16 * 16 * 3 * 3 * 3
    lin = nn.Linear(64, 32)
    e = measure(lin, torch.rand(4, 64), warmup=1, reps=3)
    assert e.macs == 4 * 64 * 32 and e.params == 64 * 32 + 32
    assert e.latency_ms > 0 and e.latency_p90_ms >= e.latency_ms and e.reps == 3 and e.threads >= 1
    assert e.device == "cpu" and e.as_dict()["memory_method"] == CPU_MEMORY_METHOD


def test_bigger_inputs_cost_more():
    teacher = tiny_sd3_teacher(num_layers=2).eval()
    small = measure(teacher, torch.rand(1, 3, 32, 32), warmup=1, reps=3)
    big = measure(teacher, torch.rand(1, 3, 64, 64), warmup=1, reps=3)
    assert big.macs > 3 * small.macs and big.params == small.params
    assert big.input_shape == (1, 3, 64, 64) and big.memory_method == CPU_MEMORY_METHOD
    assert big.peak_mem_mb > 2 * small.peak_mem_mb > 0


def test_cpu_peak_memory_is_the_known_allocation_and_survives_allocator_reuse():
    """64 MiB temporary: within 10 %, and again on the next calls, when the allocator reuses the freed block
    (an RSS delta reads 0 there)."""
    x = torch.rand(2)
    readings = [peak_memory_mb(lambda: _alloc_64mib(x), torch.device("cpu")) for _ in range(3)]
    for mb, method in readings:
        assert method == CPU_MEMORY_METHOD
        assert abs(mb - 64) <= 6.4, readings
    e1 = measure(_alloc_64mib, x, warmup=0, reps=1)
    e2 = measure(_alloc_64mib, x, warmup=2, reps=2)
    assert abs(e1.peak_mem_mb - 64) <= 6.4 and abs(e2.peak_mem_mb - 64) <= 6.4


def test_cpu_peak_memory_counts_overlapping_tensors_not_their_sum_over_time():
    def seq(_):
        for _ in range(4):  # 4 × 16 MiB, one live at a time
            a = torch.ones(4, 1024, 1024)
            a.add_(1)
            del a
        b = torch.ones(4, 1024, 1024)
        c = torch.ones(8, 1024, 1024)  # b and c live together: 48 MiB
        return (b.sum() + c.sum()).item()

    mb, _ = peak_memory_mb(lambda: seq(None), torch.device("cpu"))
    assert abs(mb - 48) <= 4.8


def test_frees_of_earlier_tensors_do_not_lower_the_peak():
    keep = [torch.ones(8, 1024, 1024)]
    peak_memory_mb(lambda: keep.append(torch.ones(8, 1024, 1024)), torch.device("cpu"))  # profiled allocation

    def free_then_alloc():
        keep.clear()  # frees 64 MiB allocated before this call (one of them inside the previous profile)
        return _alloc_64mib(torch.zeros(1))

    mb, _ = peak_memory_mb(free_then_alloc, torch.device("cpu"))
    assert abs(mb - 64) <= 6.4


def test_tiny_teacher_upscaler_has_positive_peak_memory_quickly():
    up = _tiny_upscaler()
    lr = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        up(lr)
    t0 = time.perf_counter()
    mb, method = peak_memory_mb(lambda: up(lr), measurement_device(up, lr))
    assert method == CPU_MEMORY_METHOD and mb > 1
    assert time.perf_counter() - t0 < 30  # generous: the profiled call itself is well under a second
    e = measure(Bicubic(), torch.rand(1, 3, 32, 32), warmup=1, reps=2)
    out_bytes = 3 * 128 * 128 * 4
    assert e.peak_mem_mb * MIB >= out_bytes and e.memory_method == CPU_MEMORY_METHOD and e.params == 0


def test_device_is_the_models_not_the_examples():
    lin = nn.Linear(4, 4).to(torch.float64)
    assert measurement_device(lin, torch.rand(2, 4)) == torch.device("cpu")
    assert measurement_device(Bicubic(), torch.rand(1, 3, 8, 8)) == torch.device("cpu")
    meta = nn.Linear(4, 4, device="meta")
    assert measurement_device(meta, torch.rand(2, 4)) == torch.device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_uses_max_memory_allocated_and_the_models_device():
    cuda = torch.device("cuda")

    def alloc(x):
        y = torch.ones(16, 1024, 1024, device=cuda)  # 64 MiB
        return (y.sum() + x.sum().to(cuda)).item()

    mb, method = peak_memory_mb(lambda: alloc(torch.rand(2)), cuda)
    assert method == CUDA_MEMORY_METHOD and abs(mb - 64) <= 6.4
    up = _tiny_upscaler().to(cuda)
    e = measure(up, torch.rand(1, 3, 32, 32), warmup=1, reps=2)  # CPU example, CUDA model
    assert e.device.startswith("cuda") and e.memory_method == CUDA_MEMORY_METHOD and e.peak_mem_mb > 0


def test_latency_stats_keep_the_spread_and_count_robust_outliers():
    st = latency_stats([12.0, 10.0, 11.0, 13.0, 100.0, 12.0, 11.0])
    assert st == {"latency_ms": 12.0, "latency_p90_ms": 100.0, "latency_min_ms": 10.0, "latency_max_ms": 100.0,
                  "latency_outliers": 1}  # median 12, MAD 1: limit 12 + 3·1.4826 = 16.4
    assert latency_stats([5.0, 5.0, 5.0])["latency_outliers"] == 0  # no spread, no outlier


class _Clock:
    """Two identical "models" on a machine that slows down steadily during the measurement (each call 1 ms
    slower than the one before)."""

    def __init__(self):
        self.calls, self.order = 0, []

    def model(self, name: str):
        def call(x):
            self.calls += 1
            self.order.append(name)
            time.sleep(0.001 + 0.001 * self.calls)
        return call


def test_models_are_timed_in_interleaved_rotated_rounds_so_a_slowdown_hits_them_alike():
    clock = _Clock()
    eff = measure_many({"a": clock.model("a"), "b": clock.model("b")}, torch.zeros(1), warmup=1, reps=8)
    # warm-ups first, then rounds in rotated order (a b, b a, …); the peak-memory and MAC calls come after
    assert clock.order[:18] == ["a", "b"] + ["a", "b", "b", "a"] * 4
    ratio = eff["a"].latency_ms / eff["b"].latency_ms
    assert 0.8 < ratio < 1.25, ratio  # both medians sit at the same point of the drift
    assert eff["a"].interleaved and eff["a"].reps == 8 and eff["b"].latency_max_ms > eff["b"].latency_min_ms + 5
    clock = _Clock()  # the same machine, measured one model after the other: b reads ~2× slower than a
    a, b = measure(clock.model("a"), torch.zeros(1), 1, 8), measure(clock.model("b"), torch.zeros(1), 1, 8)
    assert b.latency_ms / a.latency_ms > 1.6 and not a.interleaved
