"""A lone ONNX ``RoiAlign`` (``mode="avg"``) -> the single-level plugin node, with the same
inputs (X ``[B, C, H, W]``, rois ``[R, 4]``, batch indices ``[R]``) and output
``[R, C, output_height, output_width]``."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.errors import MaskrtError
from maskrt.plugins.contract import SINGLE_PLUGIN_NAME, SingleRoIAlignFields

from .graph import ONNX_ROI_ALIGN, dim, is_onnx_op, roialign_attrs, set_plugin
from .report import SurgeryReport


def replace_single(graph: gs.Graph, report: SurgeryReport) -> None:
    """Turn every ONNX RoiAlign left in ``graph`` into a single-level plugin node; report the
    ones the plugin cannot run."""
    for node in graph.nodes:
        if not is_onnx_op(node, ONNX_ROI_ALIGN):
            continue
        try:
            fields = SingleRoIAlignFields.from_onnx_roialign(roialign_attrs(graph, node))
        except MaskrtError as e:
            report.unrecognised.append(f"RoiAlign {node.name!r}: {e}")
            continue
        if len(node.inputs) != 3:
            report.unrecognised.append(f"RoiAlign {node.name!r} with {len(node.inputs)} inputs")
            continue
        x, rois = node.inputs[0], node.inputs[1]
        set_plugin(node, SINGLE_PLUGIN_NAME, fields.to_onnx_attributes())
        out = node.outputs[0]
        base = out.name.replace("/", "_")
        out.dtype = x.dtype if x.dtype is not None else np.float32
        out.shape = [
            dim(rois, 0, f"{base}_R"),
            dim(x, 1, f"{base}_C"),
            fields.output_height,
            fields.output_width,
        ]
        report.single_level += 1
