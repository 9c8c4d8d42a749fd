"""One inference API over every backend: ``load_predictor(artifact, backend) -> Predictor``.

=================  ===========================================================================
backend            artifact and pipeline
=================  ===========================================================================
``torch``          a checkpoint (.pt/.pth); torchvision's own model, transform and postprocess
``onnxruntime``    a deploy ONNX; numpy preprocess -> ONNX Runtime -> numpy postprocess
``tensorrt``       an engine (.engine) with its sidecar; numpy pre/post around TensorRT
=================  ===========================================================================

All return :class:`~maskrt.detections.Detections` in original-image pixels with boolean masks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maskrt.detections import Detections
from maskrt.errors import MaskrtError

from .base import GraphPredictor, GraphRunner, Predictor

__all__ = [
    "BACKENDS",
    "SUFFIX_BACKEND",
    "GraphPredictor",
    "GraphRunner",
    "Predictor",
    "default_backend",
    "filter_by_score",
    "load_predictor",
]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# An artifact's file suffix (lower case) -> the backend that runs it; the one table of them.
SUFFIX_BACKEND = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}


def default_backend(artifact: str | os.PathLike[str]) -> str:
    """The natural backend of an artifact, from its suffix."""
    suffix = Path(artifact).suffix.lower()
    if suffix not in SUFFIX_BACKEND:
        raise MaskrtError(
            f"cannot tell the backend of {artifact} from its suffix; pass --backend "
            f"({', '.join(BACKENDS)})"
        )
    return SUFFIX_BACKEND[suffix]


def load_predictor(
    artifact: str | os.PathLike[str], backend: str | None = None, **options: Any
) -> Predictor:
    """A :class:`Predictor` for ``artifact``; ``backend`` None picks it from the suffix.

    Options by backend: torch: ``arch``, ``device``, ``factory``, ``factory_args``;
    onnxruntime: ``providers``, ``threads``, ``optimization``; tensorrt: ``contexts``.
    """
    backend = backend or default_backend(artifact)
    if not Path(artifact).is_file():
        raise MaskrtError(f"{artifact} does not exist")
    if backend == "torch":
        from .backends.torch_backend import TorchPredictor

        return TorchPredictor.load(artifact, **options)
    if backend == "onnxruntime":
        from .backends.onnxruntime_backend import OrtRunner

        return GraphPredictor(OrtRunner(artifact, **options), backend)
    if backend == "tensorrt":
        from .backends.tensorrt_backend import load_trt_runner

        return GraphPredictor(load_trt_runner(artifact, **options), backend)
    raise MaskrtError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def filter_by_score(dets: Detections, threshold: float) -> Detections:
    """``dets`` without the rows scoring below ``threshold``."""
    keep = dets.scores >= threshold
    return Detections(
        boxes=dets.boxes[keep],
        scores=dets.scores[keep],
        labels=dets.labels[keep],
        masks=None if dets.masks is None else dets.masks[keep],
        keypoints=None if dets.keypoints is None else dets.keypoints[keep],
    )
