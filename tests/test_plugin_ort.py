"""The plugin node in ONNX Runtime (onnxruntime-extensions custom op) vs torchvision."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from _roialign_cases import make_boxes, make_features, torchvision_multilevel
from maskrt.plugins import (
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
    ort_session_options,
)
from maskrt.plugins.ort import DOMAIN
from onnx import TensorProto, helper


def test_plugin_node_runs_in_onnxruntime() -> None:
    scales = [0.25, 0.125, 0.0625, 0.03125]
    image_hw = (128, 192)
    rng = np.random.default_rng(0)
    feats = make_features(rng, 2, 3, image_hw, scales)
    rois = np.stack(
        [
            np.concatenate([make_boxes(rng, 4, image_hw, k) for k in ("normal", "huge", "tiny")])
            for _ in range(2)
        ]
    )
    fields = MultiLevelRoIAlignFields(7, 2, 0, tuple(scales))
    names = ["p2", "p3", "p4", "p5", "rois"]
    node = helper.make_node(
        PLUGIN_NAME, names, ["pooled"], domain=DOMAIN, **fields.to_onnx_attributes()
    )
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(f.shape))
        for n, f in zip(names, [*feats, rois])
    ]
    graph = helper.make_graph(
        [node], "pooler", inputs, [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        ir_version=9,
    )
    session = ort.InferenceSession(
        model.SerializeToString(), ort_session_options(model), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, dict(zip(names, [*feats, rois])))
    ref = torchvision_multilevel(feats, rois, 7, 2, False, scales, image_hw)
    assert out.shape == (2, 12, 3, 7, 7)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_single_level_node_runs_in_onnxruntime() -> None:
    """A lone ONNX RoiAlign turned into the single-level plugin node gives the ONNX reference's
    answer for the original node."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 12, 16)).astype(np.float32)
    rois = make_boxes(rng, 5, (24, 32), "normal")
    idx = rng.integers(0, 2, 5).astype(np.int64)
    attrs: dict[str, Any] = {
        "output_height": 3,
        "output_width": 4,
        "sampling_ratio": 0,
        "spatial_scale": 0.5,
    }
    io = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape)),
        helper.make_tensor_value_info("rois", TensorProto.FLOAT, [5, 4]),
        helper.make_tensor_value_info("batch_indices", TensorProto.INT64, [5]),
    ]
    out = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]

    def model(node: onnx.NodeProto) -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", 16), helper.make_opsetid(DOMAIN, 1)]
        graph = helper.make_graph([node], "g", io, out)
        return helper.make_model(graph, opset_imports=opsets, ir_version=9)

    inputs = ["X", "rois", "batch_indices"]
    original = model(helper.make_node("RoiAlign", inputs, ["Y"], **attrs))
    fields = SingleRoIAlignFields.from_onnx_roialign(attrs)
    plugin = model(
        helper.make_node(
            SINGLE_PLUGIN_NAME, inputs, ["Y"], domain=DOMAIN, **fields.to_onnx_attributes()
        )
    )
    feeds = {"X": x, "rois": rois, "batch_indices": idx}
    session = ort.InferenceSession(
        plugin.SerializeToString(), ort_session_options(), providers=["CPUExecutionProvider"]
    )
    (ours,) = session.run(None, feeds)
    ref = ReferenceEvaluator(original).run(None, feeds)[0]  # type: ignore[index]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
