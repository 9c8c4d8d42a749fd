"""maskrt.export: torchvision detector -> deploy-ready, static-shape ONNX graph.

``export_onnx(model, path)`` writes the graph of any torchvision two-stage detector, checked
against the eager module, and returns an :class:`ExportSummary`; the RoIAlign units are
``maskrt::MultiScaleRoIAlign`` nodes (see :func:`unit_nodes`).

The names below load on first use, so that ``maskrt --help`` and the export verb's option
parsing do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .deploy import DeployModel, RoIAlignFn
    from .exporter import ExportSummary, build_onnx, export_onnx, unit_nodes, verify
    from .ops import RoIAlignUnit

_WHERE = {
    "DeployModel": ".deploy",
    "RoIAlignFn": ".deploy",
    "ExportSummary": ".exporter",
    "build_onnx": ".exporter",
    "export_onnx": ".exporter",
    "unit_nodes": ".exporter",
    "verify": ".exporter",
    "RoIAlignUnit": ".ops",
}

__all__ = [
    "DeployModel",
    "ExportSummary",
    "RoIAlignFn",
    "RoIAlignUnit",
    "build_onnx",
    "export_onnx",
    "unit_nodes",
    "verify",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
