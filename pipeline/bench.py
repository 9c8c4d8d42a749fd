"""Speed and memory of the deploy path against torchvision eager, measured A/B in one process.

Both sides see the same images and the same checkpoint. Each side's time is split into
pre-processing (uint8 image -> network input), inference (network) and post-processing
(network output -> boxes and pasted masks in original pixels). Runs are interleaved (A, B, B, A,
...) so that drifting clocks or caches favour neither side, with a pause after every run: both
PyTorch's OpenMP workers and ONNX Runtime's keep a core busy spinning for a while after a call
(measured: ~8 ms and ~35 ms), which would otherwise be taken from whichever side runs next. Each
side runs in its default configuration. Peak RSS is read in a fresh
subprocess per side, because one process's high-water mark cannot be split between two.

Nothing here is a test: figures go to BENCHMARKS.md with the command, machine, date and commit.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections, same_detections
from maskrt.errors import MaskrtError
from maskrt.machine import machine_facts, machine_line, peak_rss_mib
from maskrt.specs import ModelSpec

from .convert import ArtifactPaths, export_step, precision_step

STAGES = ("pre", "infer", "post")


@dataclass
class StageTimes:
    """Milliseconds per call, per stage."""

    pre: list[float] = field(default_factory=list)
    infer: list[float] = field(default_factory=list)
    post: list[float] = field(default_factory=list)

    def total(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.pre, self.infer, self.post)]

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: _stats(v)
            for name, v in (*((s, getattr(self, s)) for s in STAGES), ("total", self.total()))
        }


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "p90": float("nan")}
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90))}


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


class TorchvisionSide:
    """torchvision eager, staged as GeneralizedRCNN.forward does it."""

    name = "torchvision eager"

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    def run(self, images: Sequence[np.ndarray], times: StageTimes) -> list[Detections]:
        import torch

        from maskrt.runtime.backends.torch_backend import from_torchvision, to_tensor

        with torch.inference_mode():
            t = time.perf_counter()
            tensors = [to_tensor(im) for im in images]
            batch, _ = self.model.transform(tensors)
            times.pre.append(_ms(t))
            t = time.perf_counter()
            features = self.model.backbone(batch.tensors)
            proposals, _ = self.model.rpn(batch, features)
            dets, _ = self.model.roi_heads(features, proposals, batch.image_sizes)
            times.infer.append(_ms(t))
            t = time.perf_counter()
            originals = [tuple(im.shape[:2]) for im in images]
            out = self.model.transform.postprocess(dets, batch.image_sizes, originals)
            result = [from_torchvision(o) for o in out]
            times.post.append(_ms(t))
        return result


class OnnxRuntimeSide:
    """maskrt's deploy graph in ONNX Runtime with numpy pre/post-processing."""

    def __init__(self, onnx_path: Path, spec: ModelSpec, label: str = "maskrt onnxruntime") -> None:
        from maskrt.runtime.backends.onnxruntime_backend import OrtRunner

        self.name = label
        self.spec = spec
        self.runner = OrtRunner(onnx_path, providers=["CPUExecutionProvider"])

    def run(self, images: Sequence[np.ndarray], times: StageTimes) -> list[Detections]:
        from maskrt.runtime.postprocess import postprocess
        from maskrt.runtime.preprocess import preprocess

        t = time.perf_counter()
        batch = preprocess(images, self.spec)
        times.pre.append(_ms(t))
        t = time.perf_counter()
        outputs = self.runner(batch.images, batch.image_sizes)
        times.infer.append(_ms(t))
        t = time.perf_counter()
        result = postprocess(outputs, batch)
        times.post.append(_ms(t))
        return result


def bench_images(data: str | None, size: str | None, count: int) -> list[np.ndarray]:
    """``count`` RGB uint8 images: a dataset's val images (``data``: a root as `maskrt data
    shapes` writes it), or synthetic shapes; scaled to ``size`` ("HxW") when given."""
    from PIL import Image

    from maskrt.runtime import read_image
    from maskrt.training.shapes import generate_image, split_paths

    if count <= 0:
        raise MaskrtError("--num-images must be positive")
    if data:
        image_dir, _ = split_paths(data, "val")
        paths = sorted(image_dir.glob("*.png"))[:count]
        images = [read_image(p) for p in paths]
    else:
        images = [generate_image(123, "val", i)[0] for i in range(count)]
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise MaskrtError(f"--size wants HxW like 800x1344, got {size!r}") from None
        images = [
            np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR))
            for im in images
        ]
    return images


# Seconds to wait after each run: longer than any side's workers spin after a call.
SETTLE_S = 0.06


def _interleaved(
    sides: Sequence[Any], batches: Sequence[Sequence[np.ndarray]], reps: int
) -> tuple[list[StageTimes], list[int], int]:
    """Time every side on every batch ``reps`` times, alternating which side goes first.

    Returns the times per side, on how many images each side found the same detections as side
    0 in the first repetition (:func:`maskrt.detections.same_detections`, validate's matching
    rule; 0 for side 0 itself), and the number of images compared.
    """
    times = [StageTimes() for _ in sides]
    agree = [0] * len(sides)
    total = 0
    for rep in range(reps):
        for batch in batches:
            order = list(range(len(sides)))
            if rep % 2:
                order.reverse()
            results: dict[int, list[Detections]] = {}
            for i in order:
                results[i] = sides[i].run(batch, times[i])
                time.sleep(SETTLE_S)  # let the side's spinning workers park (module docstring)
            if rep == 0:
                total += len(batch)
                for i in range(1, len(sides)):
                    agree[i] += sum(map(same_detections, results[0], results[i]))
    return times, agree, total


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


def _peak_rss(
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


def bench_model(checkpoint: str, arch: str | None) -> tuple[ModelSpec, Any]:
    """A checkpoint, or (checkpoint == "") a random-weight ``arch`` keeping its top 100 boxes."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.specs import build_model, default_spec

    if checkpoint:
        return load_checkpoint(checkpoint, arch=arch)
    import torch

    torch.manual_seed(0)
    # Random weights score every class ~1/num_classes: a zero threshold keeps the full K
    # detections so that post-processing is measured at its realistic size.
    spec = default_spec(arch or "maskrcnn_resnet50_fpn", box_score_thresh=0.0)
    return spec, build_model(spec)


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
            times, agree, total = _interleaved(sides, batches, reps)
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
            runs = {sides[0].name: _peak_rss("torch", ckpt, arch, None, few)}
            for side, graph in zip(sides[1:], graphs.values()):
                runs[side.name] = _peak_rss("ort", ckpt, arch, str(graph), few)
            report["peak_rss_mib"] = {name: rss for name, (rss, _) in runs.items()}
            report["peak_rss_loaded_torch"] = {name: t for name, (_, t) in runs.items()}
    return report


PASTE_CASES = ("random", "saturated")


def paste_inputs(
    kind: str, num: int, image_size: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mask probabilities [num, 28, 28] and boxes [num, 4] for timing mask pasting.

    ``random``: uniform noise in boxes of up to 40 % of the image (every pixel a coin toss:
    the most arithmetic). ``saturated``: a blob near 1 in a field near 0, as a trained head
    predicts, in boxes of 40-100 % of the image (large objects).
    """
    rng = np.random.default_rng(seed)
    h, w = image_size
    if kind == "random":
        masks = rng.random((num, 28, 28), dtype=np.float32)
        xy = rng.uniform([0, 0], [w * 0.9, h * 0.9], size=(num, 2))
        wh = rng.uniform(8, [w * 0.4, h * 0.4], size=(num, 2))
    elif kind == "saturated":
        yy, xx = np.mgrid[:28, :28]
        cy, cx = rng.uniform(7, 21, (2, num, 1, 1))
        radius = rng.uniform(4, 11, (num, 1, 1))
        logits = 4 * (radius - np.hypot(yy - cy, xx - cx))
        masks = (1 / (1 + np.exp(-logits))).astype(np.float32)
        wh = rng.uniform([w * 0.4, h * 0.4], [w, h], size=(num, 2))
        xy = rng.uniform(0, 1, size=(num, 2)) * ([w, h] - wh)
    else:
        raise MaskrtError(f"unknown paste case {kind!r}; choose from {PASTE_CASES}")
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return masks, boxes


def bench_paste_masks(
    num: int = 100,
    image_size: tuple[int, int] = (800, 1344),
    reps: int = 20,
    seed: int = 0,
    kind: str = "random",
) -> dict[str, Any]:
    """maskrt's numpy mask pasting vs torchvision's paste_masks_in_image, identical inputs
    (``kind``: see :func:`paste_inputs`)."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.runtime.postprocess import paste_masks

    masks, boxes = paste_inputs(kind, num, image_size, seed)
    masks_t, boxes_t = torch.from_numpy(masks[:, None]), torch.from_numpy(boxes)

    ours_ms, ref_ms = [], []
    ours = ref = None
    for rep in range(reps):
        for which in (0, 1) if rep % 2 == 0 else (1, 0):
            t = time.perf_counter()
            if which == 0:
                ours = paste_masks(masks, boxes, image_size)
                ours_ms.append(_ms(t))
            else:
                ref = (paste_masks_in_image(masks_t, boxes_t, image_size) > 0.5)[:, 0].numpy()
                ref_ms.append(_ms(t))
    assert ours is not None and ref is not None
    return {
        "masks": kind,
        "detections": num,
        "image_size": list(image_size),
        "identical": bool(np.array_equal(ours, ref)),
        "maskrt numpy": _stats(ours_ms),
        "torchvision": _stats(ref_ms),
        "speedup": statistics.median(ref_ms) / statistics.median(ours_ms),
        "machine": machine_facts(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The end-to-end report as Markdown: ratios first, then per-stage medians and p90s."""
    lines = [
        f"### {report['model']}, {report['images']} images of {report['image_size'][0]} px, "
        f"{report['heads']} heads",
        "",
        machine_line(report["machine"]),
    ]
    for bs, entry in report["batches"].items():
        lines.append(f"\nBatch {bs}, speed-up over torchvision eager:\n")
        for name, sp in entry["speedup"].items():
            lines.append(
                f"- {name}: **{sp['total']:.2f}x** end to end (pre {sp['pre']:.2f}x, infer "
                f"{sp['infer']:.2f}x, post {sp['post']:.2f}x); identical detections "
                f"{entry['identical_detections'][name]}"
            )
        lines += [
            "",
            "| side | pre ms | infer ms | post ms | total ms (median / p90) | images/s |",
            "|---|---|---|---|---|---|",
        ]
        for side, s in entry["sides"].items():
            lines.append(
                f"| {side} | {s['pre']['median']:.1f} | {s['infer']['median']:.1f} | "
                f"{s['post']['median']:.1f} | {s['total']['median']:.1f} / {s['total']['p90']:.1f} "
                f"| {s['images_per_s']:.2f} |"
            )
    if "peak_rss_mib" in report:
        rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in report["peak_rss_mib"].items())
        lines.append(f"\nPeak RSS (fresh process each): {rss}")
    return "\n".join(lines)
