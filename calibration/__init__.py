"""maskrt.calibration: FP16 graphs with FP32 islands, INT8 graphs with calibrated Q/DQ.

TensorRT 11 builds only strongly typed networks, so precision lives in the ONNX graph itself:

* :func:`calibrate_fp16` / :func:`convert_to_fp16` -- FP16 features, FP32 coordinates and scores;
* :func:`quantize_to_int8` -- symmetric INT8 Q/DQ (per-channel weights, per-tensor activations)
  from MinMax, Percentile or Entropy calibration, with a keyed calibration cache; chosen groups
  (:func:`find_groups`: backbone stages, FPN, RPN, box/mask/keypoint heads) can stay FP16.

The names below load on first use, so that the command line can list the methods without
importing onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .methods import METHODS

if TYPE_CHECKING:
    from .fp16 import Fp16Summary, calibrate_fp16, convert_nodes_to_fp16, convert_to_fp16
    from .groups import find_groups
    from .int8 import Int8Summary, find_calibration_images, quantize_to_int8
    from .regions import Regions, find_regions, int8_nodes

_WHERE = {
    "Fp16Summary": ".fp16",
    "calibrate_fp16": ".fp16",
    "convert_nodes_to_fp16": ".fp16",
    "convert_to_fp16": ".fp16",
    "find_groups": ".groups",
    "Int8Summary": ".int8",
    "find_calibration_images": ".int8",
    "quantize_to_int8": ".int8",
    "Regions": ".regions",
    "find_regions": ".regions",
    "int8_nodes": ".regions",
}

__all__ = [
    "METHODS",
    "Fp16Summary",
    "Int8Summary",
    "Regions",
    "calibrate_fp16",
    "convert_nodes_to_fp16",
    "convert_to_fp16",
    "find_calibration_images",
    "find_groups",
    "find_regions",
    "int8_nodes",
    "quantize_to_int8",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
