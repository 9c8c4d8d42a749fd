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

import abc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maskrt.detections import Detections
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from .images import read_image
from .postprocess import postprocess
from .preprocess import preprocess

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_SUFFIX_BACKEND = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}


class Predictor(abc.ABC):
    """Detections for RGB uint8 [H, W, 3] images; ``spec`` describes the model."""

    spec: ModelSpec
    backend: str = ""

    @abc.abstractmethod
    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per image, in order (a batch of any size)."""

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        batch_size: int = 1,
        show_progress: bool = False,
    ) -> Iterator[Detections]:
        """Read and predict image files ``batch_size`` at a time, yielding one result per path."""
        from tqdm import tqdm

        if batch_size < 1:
            raise MaskrtError(f"batch size must be at least 1, got {batch_size}")
        paths = list(paths)
        with tqdm(total=len(paths), unit="img", disable=not show_progress) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                yield from self.predict([read_image(p) for p in chunk])
                bar.update(len(chunk))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release backend resources (sessions, engines, device memory)."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GraphRunner(Protocol):
    """Runs a deploy graph: contract inputs -> contract outputs (see :mod:`maskrt.contract`)."""

    spec: ModelSpec
    max_batch_size: int | None  # None: any
    fixed_size: tuple[int, int] | None  # an input (H, W) the graph requires, or None

    def __call__(self, images: np.ndarray, image_sizes: np.ndarray) -> Mapping[str, np.ndarray]: ...

    def close(self) -> None: ...


class GraphPredictor(Predictor):
    """numpy preprocessing -> a :class:`GraphRunner` -> numpy postprocessing."""

    def __init__(self, runner: GraphRunner, backend: str) -> None:
        self.runner = runner
        self.spec = runner.spec
        self.backend = backend

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        limit = self.runner.max_batch_size or max(len(images), 1)
        results: list[Detections] = []
        for start in range(0, len(images), limit):
            batch = preprocess(images[start : start + limit], self.spec, self.runner.fixed_size)
            outputs = self.runner(batch.images, batch.image_sizes)
            results.extend(postprocess(outputs, batch))
        return results

    def close(self) -> None:
        self.runner.close()


def default_backend(artifact: str | os.PathLike[str]) -> str:
    """The natural backend of an artifact, from its suffix."""
    suffix = Path(artifact).suffix.lower()
    if suffix not in _SUFFIX_BACKEND:
        raise MaskrtError(
            f"cannot tell the backend of {artifact} from its suffix; pass --backend "
            f"({', '.join(BACKENDS)})"
        )
    return _SUFFIX_BACKEND[suffix]


def load_predictor(
    artifact: str | os.PathLike[str], backend: str | None = None, **options: Any
) -> Predictor:
    """A :class:`Predictor` for ``artifact``; ``backend`` None picks it from the suffix.

    Options by backend: torch: ``arch``, ``device``; onnxruntime: ``providers``,
    ``threads``, ``optimization``; tensorrt: ``contexts``.
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
