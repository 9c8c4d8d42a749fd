"""The base of every backend: the :class:`Predictor` API and the :class:`GraphRunner` protocol.

Backends import this module; choosing a backend happens above them, in
:mod:`maskrt.runtime.predictor` (the model: Polygraphy's ``backend/base/runner.py``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from maskrt.detections import Detections
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from .images import read_image
from .postprocess import postprocess
from .preprocess import preprocess


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
