"""Timing shared by the benchmark scripts: milliseconds per call, and the row they report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TimingRow:
    """The columns every benchmark table starts with: what ran where, and its median time."""

    device: str
    dtype: str
    impl: str
    median_ms: float


def time_calls(fn: Callable[[], Any], device: str, reps: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones.

    On ``cuda`` the calls are timed with events on the current stream (the GPU's time, not the
    launch overhead alone); elsewhere with ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def machine_header() -> str:
    """Where the figures are taken (CPU and its SIMD features, versions, commit; the GPU if any),
    as one line for the top of a report."""
    from maskrt.machine import machine_facts, machine_line

    line = machine_line(machine_facts())
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    return line
