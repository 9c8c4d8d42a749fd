"""maskrt: torchvision two-stage detectors to TensorRT, exact and proven in COCO AP."""

__version__ = "0.1.0"
