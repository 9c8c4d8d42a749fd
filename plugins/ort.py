"""ONNX Runtime support: the plugin nodes as onnxruntime-extensions Python custom ops (CPU).

A surgered graph holds ``ai.onnx.contrib`` nodes whose op type is the plugin name, with inputs
``(P_1, ..., P_L, rois)`` and the plugin fields as attributes (see
:mod:`maskrt.plugins.contract`), and possibly single-level nodes (``X, rois, batch_indices``).
:func:`ort_session_options` registers the CPU implementation for both op types and returns
SessionOptions that run such graphs (float32 only).

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
from maskrt.plugins.contract import (
    DEFAULT_SPATIAL_SCALES,
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)
from maskrt.plugins.roialign import multilevel_roi_align, roi_align_single

from maskrt.errors import MaskrtError

DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' custom-op domain

_registered_scales: tuple[float, ...] | None = None


def _node_scales(model: Any) -> tuple[float, ...] | None:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
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
