"""maskrt.export: torchvision detector -> deploy-ready, static-shape ONNX graph.

``export_onnx(spec, model, path)`` writes the graph and returns an :class:`ExportSummary`; the
RoIAlign units are ``maskrt::MultiScaleRoIAlign`` nodes (see :func:`unit_nodes`).
"""

from .deploy import DeployModel, RoIAlignFn
from .exporter import ExportSummary, build_onnx, export_onnx, unit_nodes, verify
from .ops import DOMAIN, MULTISCALE_ROI_ALIGN, RoIAlignUnit

__all__ = [
    "DOMAIN",
    "DeployModel",
    "MULTISCALE_ROI_ALIGN",
    "ExportSummary",
    "RoIAlignFn",
    "RoIAlignUnit",
    "build_onnx",
    "export_onnx",
    "unit_nodes",
    "verify",
]
