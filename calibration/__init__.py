"""maskrt.calibration: FP16 graphs with FP32 islands, INT8 graphs with calibrated Q/DQ.

TensorRT 11 builds only strongly typed networks, so precision lives in the ONNX graph itself:

* :func:`calibrate_fp16` / :func:`convert_to_fp16` -- FP16 features, FP32 coordinates and scores;
* :func:`quantize_to_int8` -- symmetric INT8 Q/DQ (per-channel weights, per-tensor activations)
  from MinMax, Percentile or Entropy calibration, with a keyed calibration cache.
"""

from .fp16 import Fp16Summary, calibrate_fp16, convert_to_fp16
from .int8 import METHODS, Int8Summary, find_calibration_images, quantize_to_int8
from .regions import Regions, find_regions, int8_nodes

__all__ = [
    "METHODS",
    "Fp16Summary",
    "Int8Summary",
    "Regions",
    "calibrate_fp16",
    "convert_to_fp16",
    "find_calibration_images",
    "find_regions",
    "int8_nodes",
    "quantize_to_int8",
]
