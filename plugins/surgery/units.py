"""``maskrt::MultiScaleRoIAlign`` unit nodes (written by ``maskrt export``) -> the multi-level
plugin node, with the same inputs (L feature maps ``[B, C, H_l, W_l]``, then rois ``[B, N, 4]``)
and output ``[B, N, C, P, P]``. The unit's attributes are the plugin's fields."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from maskrt.errors import MaskrtError
from maskrt.plugins.contract import (
    PLUGIN_NAME,
    UNIT_DOMAIN,
    UNIT_OP_TYPE,
    MultiLevelRoIAlignFields,
)

from .graph import set_multilevel_output, set_plugin
from .report import SurgeryReport


def replace_units(graph: gs.Graph, report: SurgeryReport) -> None:
    """Turn every unit node of ``graph`` into a plugin node; report the ones it cannot."""
    for node in list(graph.nodes):
        if node.domain != UNIT_DOMAIN or node.op != UNIT_OP_TYPE:
            continue
        try:
            fields = MultiLevelRoIAlignFields.from_onnx_attributes(node.attrs)
        except MaskrtError as e:
            report.unrecognised.append(f"{UNIT_DOMAIN}::{UNIT_OP_TYPE} {node.name!r}: {e}")
            continue
        if len(node.inputs) != len(fields.spatial_scales) + 1 or len(node.outputs) != 1:
            report.unrecognised.append(
                f"{UNIT_DOMAIN}::{UNIT_OP_TYPE} {node.name!r}: {len(node.inputs)} inputs for "
                f"{len(fields.spatial_scales)} levels"
            )
            continue
        features, rois = node.inputs[:-1], node.inputs[-1]
        set_plugin(node, PLUGIN_NAME, fields.to_onnx_attributes())
        set_multilevel_output(node.outputs[0], features[0], rois, fields.output_size)
        report.units += 1
