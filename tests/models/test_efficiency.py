"""Efficiency protocol: exact MAC counts, parameter counts, latency and memory that respond to the work done."""

from __future__ import annotations

import torch
from torch import nn

from srcompress.models.efficiency import count_macs, measure
from srcompress.models.teachers.tiny import tiny_sd3_teacher


def test_macs_and_params_are_exact_for_known_layers():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 3, 16, 16)
    assert count_macs(lambda: conv(x)) == 8 * 16 * 16 * 3 * 3 * 3
    lin = nn.Linear(64, 32)
    e = measure(lin, torch.rand(4, 64), warmup=1, reps=3)
    assert e.macs == 4 * 64 * 32 and e.params == 64 * 32 + 32
    assert e.latency_ms > 0 and e.latency_p90_ms >= e.latency_ms and e.reps == 3 and e.threads >= 1


def test_bigger_inputs_cost_more():
    teacher = tiny_sd3_teacher(num_layers=2).eval()
    small = measure(teacher, torch.rand(1, 3, 32, 32), warmup=1, reps=3)
    big = measure(teacher, torch.rand(1, 3, 64, 64), warmup=1, reps=3)
    assert big.macs > 3 * small.macs and big.params == small.params
    assert big.input_shape == (1, 3, 64, 64) and big.memory_method == "rss-delta-1kHz"


def test_peak_memory_sees_a_large_temporary():
    def alloc(x):
        y = torch.ones(64, 1024, 1024)  # 256 MiB, freed on return
        return (y.sum() + x.sum()).item()

    e = measure(alloc, torch.rand(2), warmup=0, reps=1)
    assert e.peak_mem_mb > 100
