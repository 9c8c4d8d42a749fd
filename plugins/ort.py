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
inputs, so the float list ``spatial_scales`` (and with it the number of levels) is fixed when
the op is registered: it comes from the plugin nodes of ``model`` when one is given, else from
``spatial_scales``, else it is torchvision's FPN default (0.25, 0.125, 0.0625, 0.03125). All
plugin nodes of a process share these scales; the scalar fields are read per node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError
from maskrt.plugins.contract import (
    DEFAULT_SPATIAL_SCALES,
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)
from maskrt.plugins.roialign import multilevel_roi_align, roi_align_single

_registered_scales: tuple[float, ...] | None = None


def _node_scales(model: Any) -> tuple[float, ...] | None:
    if isinstance(model, (str, os.PathLike)):
        from maskrt.onnxio import load_onnx

        model = load_onnx(model, weights=False)
    found: set[tuple[float, ...]] = set()
    graphs = [model.graph] + [f for f in model.functions]
    for g in graphs:
        for node in g.node:
            if node.op_type == PLUGIN_NAME:
                for a in node.attribute:
                    if a.name == "spatial_scales":
                        found.add(tuple(float(s) for s in a.floats))
    if len(found) > 1:
        raise MaskrtError(f"{PLUGIN_NAME} nodes disagree on spatial_scales: {sorted(found)}")
    return found.pop() if found else None


def _register(scales: tuple[float, ...]) -> None:
    global _registered_scales
    if _registered_scales is not None:
        if len(_registered_scales) != len(scales):
            raise MaskrtError(
                f"{PLUGIN_NAME} is registered with ONNX Runtime for "
                f"{len(_registered_scales)} levels in this process; cannot also run {len(scales)}"
            )
        _registered_scales = scales
        return

    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    int_attrs = ("output_size", "sampling_ratio", "aligned", "canonical_scale", "canonical_level")

    @onnx_op(
        op_type=PLUGIN_NAME,
        inputs=[PyCustomOpDef.dt_float] * (len(scales) + 1),
        outputs=[PyCustomOpDef.dt_float],
        attrs={name: PyCustomOpDef.dt_int64 for name in int_attrs},
    )
    def _multilevel_roi_align(*inputs: np.ndarray, **attrs: int) -> np.ndarray:
        assert _registered_scales is not None
        fields = MultiLevelRoIAlignFields(spatial_scales=_registered_scales, **attrs)  # type: ignore[arg-type]
        return multilevel_roi_align(list(inputs[:-1]), inputs[-1], fields)

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

    _registered_scales = scales


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


def ort_session_options(model: Any = None, spatial_scales: Sequence[float] | None = None) -> Any:
    """``onnxruntime.SessionOptions`` that run maskrt plugin nodes on the CPU.

    Args:
        model: optional ``onnx.ModelProto`` or path; the spatial scales are read from its plugin
            nodes.
        spatial_scales: the scales when no model is given (default: torchvision's FPN scales).
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    scales = _node_scales(model) if model is not None else None
    if scales is None:
        scales = tuple(float(s) for s in (spatial_scales or DEFAULT_SPATIAL_SCALES))
    _register(scales)
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options
