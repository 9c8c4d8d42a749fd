"""maskrt.runtime: numpy pre/post-processing and one Predictor API over torch, ONNX Runtime and
TensorRT backends, plus the TensorRT engine build.

    predictor = load_predictor("model.onnx")          # backend from the suffix
    detections = predictor.predict([rgb_uint8_hwc])   # list[maskrt.detections.Detections]
"""

from .images import read_image
from .predictor import BACKENDS, Predictor, default_backend, filter_by_score, load_predictor

__all__ = [
    "BACKENDS",
    "Predictor",
    "default_backend",
    "filter_by_score",
    "load_predictor",
    "read_image",
]
