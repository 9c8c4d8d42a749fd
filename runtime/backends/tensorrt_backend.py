"""TensorRT backend: numpy pre/post around :class:`maskrt.runtime.trt.engine.TrtRunner`."""

from __future__ import annotations

import os
from typing import Any


def load_trt_runner(engine_path: str | os.PathLike[str], **options: Any) -> Any:
    """A TrtRunner for ``engine_path`` (``contexts``); TensorRT loads lazily."""
    from ..trt.common import tensorrt

    tensorrt()  # a clear MaskrtError where TensorRT is missing
    from ..trt.engine import TrtRunner

    return TrtRunner(engine_path, **options)
