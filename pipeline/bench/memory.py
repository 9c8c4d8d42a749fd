"""Peak RSS of one side, run alone in a fresh process: one process's high-water mark cannot be
split between two sides."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.machine import peak_rss_mib

from .harness import OnnxRuntimeSide, StageTimes, TorchvisionSide, bench_model


def _child_peak_rss(
    kind: str,
    checkpoint: str,
    arch: str | None,
    onnx_path: str | None,
    images: list[np.ndarray],
    reps: int,
    queue: Any,
) -> None:
    """Run one side alone in a fresh process and report its peak RSS (MiB) and whether torch
    was loaded. The ONNX Runtime side holds only what it needs: the graph (its spec read from
    the graph's metadata), never torch or the model."""
    side: Any
    if kind == "torch":
        _, model = bench_model(checkpoint, arch)
        side = TorchvisionSide(model)
    else:
        from maskrt.onnxio import read_spec

        side = OnnxRuntimeSide(Path(onnx_path or ""), read_spec(onnx_path or ""))
    times = StageTimes()
    for _ in range(reps):
        for im in images:
            side.run([im], times)
    queue.put((peak_rss_mib(), "torch" in sys.modules))


def peak_rss(
    kind: str,
    checkpoint: str,
    arch: str | None,
    onnx_path: str | None,
    images: list[np.ndarray],
    reps: int = 2,
) -> tuple[float, bool]:
    """(peak RSS in MiB, torch loaded) of one side run alone in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child_peak_rss, args=(kind, checkpoint, arch, onnx_path, images, reps, queue)
    )
    proc.start()
    try:
        rss, torch_loaded = queue.get(timeout=1800)
        return float(rss), bool(torch_loaded)
    finally:
        proc.join()
