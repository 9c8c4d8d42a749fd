"""maskrt.runtime: numpy pre/post-processing and one Predictor API over torch, ONNX Runtime and
TensorRT backends, plus the TensorRT engine build.

    predictor = load_predictor("model.onnx")          # backend from the suffix
    detections = predictor.predict([rgb_uint8_hwc])   # list[maskrt.detections.Detections]
    with predict_video(predictor, "clip.mp4") as run:  # needs the video extra
        for frame, dets in run: ...                     # VideoFrame, Detections, frame order
"""

from .images import read_image
from .predictor import BACKENDS, Predictor, default_backend, filter_by_score, load_predictor
from .video import predict_video

__all__ = [
    "BACKENDS",
    "Predictor",
    "default_backend",
    "filter_by_score",
    "load_predictor",
    "predict_video",
    "read_image",
]
