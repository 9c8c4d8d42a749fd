"""Small graphsurgeon helpers the matchers share: reading constants and producers, and turning a
node into a plugin node with a declared output shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.plugins.contract import PLUGIN_DOMAIN, PLUGIN_NAME, SINGLE_PLUGIN_NAME

ONNX_ROI_ALIGN = "RoiAlign"
DEFAULT_DOMAINS = ("", "ai.onnx")
PLUGIN_OP_TYPES = (PLUGIN_NAME, SINGLE_PLUGIN_NAME)


def is_onnx_op(node: gs.Node, op: str) -> bool:
    """``node`` is the standard ONNX operator ``op``."""
    return node.op == op and node.domain in DEFAULT_DOMAINS + (None,)


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        value = t.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def producer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    """The node that makes ``t`` (the ONNX operator ``op`` when given), else None."""
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if op is not None and not is_onnx_op(node, op):
        return None
    return node


def skip_casts(t: gs.Tensor) -> gs.Tensor:
    while (n := producer(t, "Cast")) is not None:
        t = n.inputs[0]
    return t


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def opset(graph: gs.Graph) -> int:
    return int(graph.opset)


# Unsqueeze and Squeeze take ``axes`` as an input from opset 13 on, as an attribute before.
AXES_INPUT_OPSET = 13


def axes_node(
    graph: gs.Graph, op: str, name: str, x: gs.Tensor, axes: gs.Constant, out: gs.Tensor
) -> gs.Node:
    """An ``op`` node (Unsqueeze or Squeeze) over the int64 ``axes``, in the form ``graph``'s
    opset takes: an input from opset 13 on, an attribute before."""
    if opset(graph) < AXES_INPUT_OPSET:
        values = [int(a) for a in np.asarray(axes.values).ravel()]
        return gs.Node(op, name, attrs={"axes": values}, inputs=[x], outputs=[out])
    return gs.Node(op, name, inputs=[x, axes], outputs=[out])


def roialign_attrs(graph: gs.Graph, node: gs.Node) -> dict[str, Any]:
    """A ``RoiAlign`` node's attributes; RoiAlign-10 (opset < 16) has no
    ``coordinate_transformation_mode`` and pools like ``output_half_pixel``: say so."""
    attrs = dict(node.attrs)
    if opset(graph) < 16:
        attrs["coordinate_transformation_mode"] = "output_half_pixel"
    return attrs


def set_plugin(node: gs.Node, op: str, attrs: dict[str, Any]) -> None:
    """Make ``node`` the plugin node ``op`` with ``attrs`` (its inputs and outputs stay)."""
    node.op = op
    node.domain = PLUGIN_DOMAIN
    node.attrs = dict(attrs)


def dim(t: gs.Tensor, i: int, fallback: str) -> int | str:
    """Dimension ``i`` of ``t`` when known, else the symbolic name ``fallback``."""
    shape = t.shape
    if shape is not None and len(shape) > i and shape[i] not in (None, "", -1):
        return shape[i]
    return fallback


def set_multilevel_output(out: gs.Tensor, feature: gs.Tensor, rois: gs.Tensor, p: int) -> None:
    """Give the multi-level plugin's output its shape ``[B, N, C, P, P]`` explicitly: shape
    inference has no schema for the plugin op."""
    base = out.name.replace("/", "_")
    out.dtype = feature.dtype if feature.dtype is not None else np.float32
    out.shape = [
        dim(rois, 0, f"{base}_B"),
        dim(rois, 1, f"{base}_N"),
        dim(feature, 1, f"{base}_C"),
        p,
        p,
    ]
