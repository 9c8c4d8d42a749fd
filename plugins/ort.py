"""ONNX Runtime support: the plugin nodes as onnxruntime-extensions Python custom ops (CPU).

A surgered graph holds ``ai.onnx.contrib`` nodes whose op type is the plugin name, with inputs
``(P_1, ..., P_L, rois)`` and the plugin fields as attributes (see
:mod:`maskrt.plugins.contract`), and possibly single-level nodes (``X, rois, batch_indices``).
:func:`ort_session_options` registers the CPU implementation for both op types and returns
SessionOptions that run such graphs.

The Python ops take and give float32 only: onnxruntime-extensions 0.15.2 hands a Python op's
result back to C++ as a list of Python floats, which it cannot store into a float16 output (the
kernel throws outside ORT's error handling and the process aborts). A FP16 graph's plugin nodes
(FP16 features, FP32 RoIs, FP16 output) are therefore run through :func:`upcast_plugin_nodes`, an
in-memory rewrite that wraps them in Casts; the file TensorRT reads keeps its FP16 plugin nodes.

onnxruntime-extensions Python ops take only scalar/string attributes and a fixed number of
inputs, so a multi-level node cannot be run as it is written for TensorRT (a float list
``spatial_scales``, any number of levels). :func:`ort_rewrite` rewrites a graph in memory for
ONNX Runtime: each multi-level node's op type gets its level count (``..._L4``, one registered op
per count, 1 to 8) and its scales as a string attribute, so every node runs with its own scales
and graphs of different level counts and scales run side by side in one process.
:func:`ort_session` does it all: copy, rewrite, register, open the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError
from maskrt.plugins.contract import (
    MAX_LEVELS,
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)
from maskrt.plugins.roialign import multilevel_roi_align, roi_align_single

# Op type suffix per level count, and the string attribute the rewrite adds.
ATTR_SCALES_TEXT = "spatial_scales_text"
_registered = False


def ort_op_type(levels: int) -> str:
    """The op type ONNX Runtime runs a multi-level node of ``levels`` feature maps as."""
    return f"{PLUGIN_NAME}_L{levels}"


def _scales_text(scales: Sequence[float]) -> str:
    return ",".join(repr(float(s)) for s in scales)  # repr round-trips every float exactly


def _register() -> None:
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    int_attrs = ("output_size", "sampling_ratio", "aligned", "canonical_scale", "canonical_level")
    attrs: dict[str, Any] = {name: PyCustomOpDef.dt_int64 for name in int_attrs}
    attrs[ATTR_SCALES_TEXT] = PyCustomOpDef.dt_string

    def _multilevel_roi_align(*inputs: np.ndarray, **attrs: Any) -> np.ndarray:
        scales = tuple(float(s) for s in str(attrs.pop(ATTR_SCALES_TEXT)).split(","))
        fields = MultiLevelRoIAlignFields(spatial_scales=scales, **attrs)
        return multilevel_roi_align(list(inputs[:-1]), inputs[-1], fields)

    for levels in range(1, MAX_LEVELS + 1):
        onnx_op(
            op_type=ort_op_type(levels),
            inputs=[PyCustomOpDef.dt_float] * (levels + 1),
            outputs=[PyCustomOpDef.dt_float],
            attrs=attrs,
        )(_multilevel_roi_align)

    @onnx_op(
        op_type=SINGLE_PLUGIN_NAME,
        inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64],
        outputs=[PyCustomOpDef.dt_float],
        attrs={
            "output_height": PyCustomOpDef.dt_int64,
            "output_width": PyCustomOpDef.dt_int64,
            "sampling_ratio": PyCustomOpDef.dt_int64,
            "spatial_scale": PyCustomOpDef.dt_float,
            "aligned": PyCustomOpDef.dt_int64,
        },
    )
    def _roi_align_single(
        x: np.ndarray, rois: np.ndarray, batch_indices: np.ndarray, **attrs: Any
    ) -> np.ndarray:
        return roi_align_single(x, rois, batch_indices, SingleRoIAlignFields(**attrs))

    _registered = True


def _elem_types(model: Any) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return {name: t for name, t in types.items() if t}


def _float_inputs(node: Any) -> list[int]:
    """Indices of a plugin node's float inputs (the single-level node's batch_indices is int64)."""
    return [0, 1] if node.op_type == SINGLE_PLUGIN_NAME else list(range(len(node.input)))


def upcast_plugin_nodes(model: Any) -> int:
    """Make every plugin node of ``model`` (in place) take and give float32, as the Python ops
    registered here do, by wrapping it in Casts where its tensors are float16.

    A FP16 graph's multi-level node reads FP16 ``[B, C, H_l, W_l]`` features and FP32 ``[B, N, 4]``
    RoIs and gives FP16 ``[B, N, C, P, P]``; it becomes ``Cast<fp16>(node(Cast<fp32>(P_l), rois))``.
    Upcasting FP16 is exact and the pooling interpolates in FP32 either way, so only the rounding
    of the result back to FP16 differs (by at most one FP16 ulp) from a FP16 kernel.
    Only the top-level graph is visited: that is where surgery puts the plugin nodes.

    Returns:
        how many plugin nodes were wrapped (0: ``model`` is unchanged).
    """
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    plugins = {
        i
        for i, n in enumerate(g.node)
        if n.domain == PLUGIN_DOMAIN and n.op_type in (PLUGIN_NAME, SINGLE_PLUGIN_NAME)
    }
    types = _elem_types(model)
    if any(g.node[i].input[k] not in types for i in plugins for k in _float_inputs(g.node[i])):
        types = _elem_types(onnx.shape_inference.infer_shapes(model))
    upcast: dict[str, str] = {}  # fp16 tensor -> its fp32 copy (one Cast per tensor)
    nodes: list[Any] = []
    wrapped = 0
    for i, node in enumerate(g.node):
        if i not in plugins:
            nodes.append(node)
            continue
        feature_type = types.get(node.input[0], TensorProto.FLOAT)
        before = len(nodes)
        for k in _float_inputs(node):
            name = node.input[k]
            elem = types.get(name, TensorProto.FLOAT)
            if elem == TensorProto.FLOAT:
                continue
            if elem != TensorProto.FLOAT16:
                raise MaskrtError(
                    f"{node.op_type} node {node.name!r}: input {name!r} is "
                    f"{TensorProto.DataType.Name(elem)}; ONNX Runtime runs it on FLOAT/FLOAT16"
                )
            if name not in upcast:
                upcast[name] = f"{name}__maskrt_fp32"
                nodes.append(helper.make_node("Cast", [name], [upcast[name]], to=TensorProto.FLOAT))
            node.input[k] = upcast[name]
        nodes.append(node)
        out = node.output[0]
        if types.get(out, feature_type) == TensorProto.FLOAT16:
            node.output[0] = f"{out}__maskrt_fp32"
            nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT16))
        wrapped += int(len(nodes) > before + 1)  # a Cast went in before or after it
    if wrapped:
        del g.node[:]
        g.node.extend(nodes)
    return wrapped


def _name_by_levels(model: Any) -> int:
    """Give each multi-level plugin node of ``model`` (in place) its ONNX Runtime op type and
    its scales as a string attribute; returns how many nodes changed."""
    from onnx import helper

    changed = 0
    for node in model.graph.node:
        if node.domain != PLUGIN_DOMAIN or node.op_type != PLUGIN_NAME:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        fields = MultiLevelRoIAlignFields.from_onnx_attributes(attrs)
        if len(node.input) != len(fields.spatial_scales) + 1:
            raise MaskrtError(
                f"{PLUGIN_NAME} node {node.name!r} has {len(node.input) - 1} feature maps "
                f"but {len(fields.spatial_scales)} spatial_scales"
            )
        node.op_type = ort_op_type(len(fields.spatial_scales))
        node.attribute.append(
            helper.make_attribute(ATTR_SCALES_TEXT, _scales_text(fields.spatial_scales))
        )
        changed += 1
    return changed


def ort_rewrite(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``, in place) so that ONNX Runtime's CPU ops run
    its plugin nodes: FP16 plugin tensors wrapped in Casts (:func:`upcast_plugin_nodes`) and
    multi-level nodes named by level count with their scales as text. Only the top-level graph
    is visited: that is where surgery puts the plugin nodes. Returns how many nodes changed
    (0: ``model`` is unchanged)."""
    return upcast_plugin_nodes(model) + _name_by_levels(model)


def ort_session_options() -> Any:
    """``onnxruntime.SessionOptions`` with maskrt's plugin ops registered for the CPU; the graph
    run with them must have been through :func:`ort_rewrite`."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    _register()
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options


def ort_session(
    model: Any, providers: Sequence[str] = ("CPUExecutionProvider",), options: Any = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` on a copy of ``model`` (``onnx.ModelProto`` with its
    weights loaded) rewritten by :func:`ort_rewrite`. ``options``: SessionOptions to start from
    (the plugin ops' library is registered on them)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    ort_rewrite(copy)
    _register()
    if options is None:
        options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(copy.SerializeToString(), options, providers=list(providers))
