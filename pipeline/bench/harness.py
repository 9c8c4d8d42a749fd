"""The timing harness: the two sides (torchvision eager, the deploy graph in ONNX Runtime),
each timed per stage, run interleaved on the same images (why: :mod:`maskrt.pipeline.bench`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections, same_detections
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

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
            name: stats(v)
            for name, v in (*((s, getattr(self, s)) for s in STAGES), ("total", self.total()))
        }


def stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "p90": float("nan")}
    return {"median": statistics.median(values), "p90": float(np.percentile(values, 90))}


def ms(start: float) -> float:
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
            times.pre.append(ms(t))
            t = time.perf_counter()
            features = self.model.backbone(batch.tensors)
            proposals, _ = self.model.rpn(batch, features)
            dets, _ = self.model.roi_heads(features, proposals, batch.image_sizes)
            times.infer.append(ms(t))
            t = time.perf_counter()
            originals = [tuple(im.shape[:2]) for im in images]
            out = self.model.transform.postprocess(dets, batch.image_sizes, originals)
            result = [from_torchvision(o) for o in out]
            times.post.append(ms(t))
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
        times.pre.append(ms(t))
        t = time.perf_counter()
        outputs = self.runner(batch.images, batch.image_sizes)
        times.infer.append(ms(t))
        t = time.perf_counter()
        result = postprocess(outputs, batch)
        times.post.append(ms(t))
        return result


def bench_images(data: str | None, size: str | None, count: int) -> list[np.ndarray]:
    """``count`` RGB uint8 images: a dataset's val images (``data``: a root as `maskrt data
    shapes` writes it), or synthetic shapes; scaled to ``size`` ("HxW") when given."""
    from PIL import Image

    from maskrt.coco import split_paths
    from maskrt.runtime import read_image
    from maskrt.training.shapes import generate_image

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


def interleaved(
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
                time.sleep(SETTLE_S)  # let the side's spinning workers park (see the package)
            if rep == 0:
                total += len(batch)
                for i in range(1, len(sides)):
                    agree[i] += sum(map(same_detections, results[0], results[i]))
    return times, agree, total


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
