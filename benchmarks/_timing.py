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
