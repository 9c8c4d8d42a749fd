"""The end-to-end benchmark: torchvision eager vs the deploy graph in each precision, timed
with :mod:`.harness`, peak memory from :mod:`.memory`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError
from maskrt.machine import machine_facts

from ..convert import ArtifactPaths, export_step, precision_step
from .harness import STAGES, OnnxRuntimeSide, StageTimes, TorchvisionSide, bench_model, interleaved
from .memory import peak_rss


def _check_precisions(precisions: Sequence[str], calib_data: Sequence[str] | None) -> None:
    """Refuse what ``_precision_graphs`` cannot make, before any slow export."""
    from maskrt.contract import PRECISIONS

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise MaskrtError(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
    if "int8" in precisions and not calib_data:
        raise MaskrtError("--precision int8 needs --calib-data (a folder of calibration images)")


# INT8 calibration for timing only: accuracy is validate's business, so a quick one.
BENCH_CALIB_IMAGES = 64


def _precision_graphs(
    paths: ArtifactPaths,
    precisions: Sequence[str],
    calib_data: Sequence[str] | None,
    log: Callable[[str], None],
) -> dict[str, Path]:
    """The deploy graph in each precision, made with `maskrt convert`'s own steps and names."""
    graphs = {}
    for precision in precisions:
        if precision != "fp32":
            log(f"making the {precision} graph ...")
            precision_step(paths.fp32, paths.graph(precision), precision, calib_data, "entropy",
                           BENCH_CALIB_IMAGES, cache=None, show_progress=False)  # fmt: skip
        graphs[precision] = paths.graph(precision)
    return graphs


def bench_end_to_end(
    images: Sequence[np.ndarray],
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    reps: int = 5,
    batch_sizes: Sequence[int] = (1, 4),
    precisions: Sequence[str] = ("fp32",),
    calib_data: Sequence[str] | None = None,
    compact_heads: bool = True,
    measure_memory: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """torchvision eager vs the deploy graph in ONNX Runtime (one side per precision), same
    checkpoint, same images. ``calib_data`` (images) is needed for ``int8``. ``compact_heads``
    exports the graph meant for ONNX Runtime (mask/keypoint heads on detected rows only); False
    times the all-static graph made for TensorRT."""
    _check_precisions(precisions, calib_data)
    ckpt = os.fspath(checkpoint) if checkpoint else ""
    spec, model = bench_model(ckpt, arch)
    report: dict[str, Any] = {
        "model": spec.arch,
        "images": len(images),
        "image_size": [list(im.shape[:2]) for im in images[:1]],
        "heads": "compact" if compact_heads else "static",
        "machine": machine_facts(),
        "batches": {},
    }
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-") as tmp:
        paths = ArtifactPaths(Path(tmp))
        log(f"exporting {spec.arch} ...")
        export_step(spec, model, paths.fp32, compact_heads=compact_heads)
        graphs = _precision_graphs(paths, precisions, calib_data, log)
        sides: list[Any] = [TorchvisionSide(model)]
        sides += [OnnxRuntimeSide(g, spec, f"maskrt onnxruntime {p}") for p, g in graphs.items()]
        for bs in batch_sizes:
            batches = [list(images[i : i + bs]) for i in range(0, len(images) - bs + 1, bs)]
            if not batches:
                continue
            log(f"batch {bs}: {len(batches)} batches x {reps} reps, interleaved ...")
            for side in sides:  # warm-up, untimed
                side.run(batches[0], StageTimes())
            times, agree, total = interleaved(sides, batches, reps)
            entry: dict[str, Any] = {"identical_detections": {}, "speedup": {}, "sides": {}}
            for side, t in zip(sides, times):
                stats: dict[str, Any] = dict(t.summary())
                stats["images_per_s"] = bs * 1e3 / stats["total"]["median"]
                entry["sides"][side.name] = stats
            ref = entry["sides"][sides[0].name]
            for side, a in zip(sides[1:], agree[1:]):
                ours = entry["sides"][side.name]
                entry["identical_detections"][side.name] = f"{a}/{total}"
                entry["speedup"][side.name] = {
                    k: ref[k]["median"] / ours[k]["median"] for k in (*STAGES, "total")
                }
            report["batches"][str(bs)] = entry
        if measure_memory:
            log("peak RSS, one fresh process per side ...")
            few = list(images[: min(4, len(images))])
            runs = {sides[0].name: peak_rss("torch", ckpt, arch, None, few)}
            for side, graph in zip(sides[1:], graphs.values()):
                runs[side.name] = peak_rss("ort", ckpt, arch, str(graph), few)
            report["peak_rss_mib"] = {name: rss for name, (rss, _) in runs.items()}
            report["peak_rss_loaded_torch"] = {name: t for name, (_, t) in runs.items()}
    return report
