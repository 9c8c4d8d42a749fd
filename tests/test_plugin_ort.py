"""The plugin node in ONNX Runtime (onnxruntime-extensions custom op) vs torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from _roialign_cases import FP32_TOL, make_boxes, make_features, torchvision_multilevel
from onnx import TensorProto, helper

from maskrt.plugins import (
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
    multilevel_roi_align,
    ort_session,
)
from maskrt.plugins.contract import PLUGIN_DOMAIN
from maskrt.plugins.ort import upcast_plugin_nodes

SCALES = [0.25, 0.125, 0.0625, 0.03125]
LEVELS = ["p2", "p3", "p4", "p5"]


def _pooler_case(seed: int) -> tuple[list[np.ndarray], np.ndarray, tuple[int, int]]:
    """FPN-sized features ``[2, 3, H_l, W_l]`` and ``[2, 12, 4]`` RoIs of mixed sizes."""
    image_hw = (128, 192)
    rng = np.random.default_rng(seed)
    feats = make_features(rng, 2, 3, image_hw, SCALES)
    rois = np.stack(
        [
            np.concatenate([make_boxes(rng, 4, image_hw, k) for k in ("normal", "huge", "tiny")])
            for _ in range(2)
        ]
    )
    return feats, rois, image_hw


def _pooler_model(
    feats: list[np.ndarray], feature_type: int, output_sizes: tuple[int, ...]
) -> onnx.ModelProto:
    """One plugin node per output size, all reading the same features and ``rois``; the node
    for ``output_sizes[i]`` writes ``pooled{i}``, of the features' type."""
    nodes = [
        helper.make_node(
            PLUGIN_NAME,
            [*LEVELS, "rois"],
            [f"pooled{i}"],
            domain=PLUGIN_DOMAIN,
            **MultiLevelRoIAlignFields(p, 2, 0, tuple(SCALES)).to_onnx_attributes(),
        )
        for i, p in enumerate(output_sizes)
    ]
    inputs = [
        helper.make_tensor_value_info(n, feature_type, list(f.shape)) for n, f in zip(LEVELS, feats)
    ]
    inputs.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, [2, None, 4]))
    c = feats[0].shape[1]
    outputs = [
        helper.make_tensor_value_info(f"pooled{i}", feature_type, [2, None, c, p, p])
        for i, p in enumerate(output_sizes)
    ]
    graph = helper.make_graph(nodes, "pooler", inputs, outputs)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
        ir_version=9,
    )


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort_session(model).run(None, feeds)


def test_plugin_node_runs_in_onnxruntime() -> None:
    feats, rois, image_hw = _pooler_case(0)
    model = _pooler_model(feats, TensorProto.FLOAT, (7,))
    assert upcast_plugin_nodes(model) == 0  # float32 nodes run as they are
    (out,) = _run(model, dict(zip([*LEVELS, "rois"], [*feats, rois])))
    ref = torchvision_multilevel(feats, rois, 7, 2, False, SCALES, image_hw)
    assert out.shape == (2, 12, 3, 7, 7)
    np.testing.assert_allclose(out, ref, rtol=0, atol=FP32_TOL)


def test_fp16_plugin_node_runs_in_onnxruntime() -> None:
    """A FP16 graph's plugin nodes (FP16 features, FP32 RoIs, FP16 out), two of them sharing the
    features as the box and mask poolers do, run after :func:`upcast_plugin_nodes`."""
    feats32, rois, image_hw = _pooler_case(1)
    feats = [f.astype(np.float16) for f in feats32]
    model = _pooler_model(feats, TensorProto.FLOAT16, (7, 14))
    assert upcast_plugin_nodes(model) == 2
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 4 + 2  # one per shared feature map, one per output
    onnx.checker.check_model(model)
    upcast = [f.astype(np.float32) for f in feats]
    (out7, out14) = _run(model, dict(zip([*LEVELS, "rois"], [*feats, rois])))
    for out, p in ((out7, 7), (out14, 14)):
        assert out.dtype == np.float16 and out.shape == (2, 12, 3, p, p)
        ref = torchvision_multilevel(upcast, rois, p, 2, False, SCALES, image_hw)
        # the only error is the final rounding to FP16: half an ulp, 2 ** -11 relative (measured
        # 4.84e-4 relative, ORT 1.31.1 and 1.32.0; atol covers FP16 subnormals, 2**-25 absolute)
        np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2.0**-11, atol=1e-5)
        # and the CPU kernel run on FP16 directly (the TensorRT plugin's FP16 path) agrees: measured
        # 0 (ORT 1.31.1 and 1.32.0); each side rounds the same FP32 value once, so one ulp bounds it
        fields = MultiLevelRoIAlignFields(p, 2, 0, tuple(SCALES))
        direct = multilevel_roi_align(feats, rois, fields).astype(np.float32)
        np.testing.assert_allclose(out.astype(np.float32), direct, rtol=2.0**-10, atol=1e-5)


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
        opsets = [helper.make_opsetid("", 16), helper.make_opsetid(PLUGIN_DOMAIN, 1)]
        graph = helper.make_graph([node], "g", io, out)
        return helper.make_model(graph, opset_imports=opsets, ir_version=9)

    inputs = ["X", "rois", "batch_indices"]
    original = model(helper.make_node("RoiAlign", inputs, ["Y"], **attrs))
    fields = SingleRoIAlignFields.from_onnx_roialign(attrs)
    plugin = model(
        helper.make_node(
            SINGLE_PLUGIN_NAME, inputs, ["Y"], domain=PLUGIN_DOMAIN, **fields.to_onnx_attributes()
        )
    )
    feeds = {"X": x, "rois": rois, "batch_indices": idx}
    (ours,) = ort_session(plugin).run(None, feeds)
    ref = ReferenceEvaluator(original).run(None, feeds)[0]  # type: ignore[index]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=FP32_TOL)


# -------------------------------------------------------------- FP16 deploy graph, end to end


@pytest.fixture(scope="module")
def fp16_graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(FP16 graph, the same after surgery) of a randomly initialised demo Mask R-CNN."""
    import torch

    from maskrt.calibration import convert_to_fp16
    from maskrt.export import export_onnx
    from maskrt.plugins.surgery import surgery
    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fp16_ort")
    fp32 = folder / "model.onnx"
    export_onnx(build_model(demo_spec()), fp32, spec=demo_spec(), progress=False)
    fp16 = convert_to_fp16(onnx.load(str(fp32)))
    surgered, report = surgery(fp16)
    assert report.replaced == 2
    plugins = [n for n in surgered.graph.node if n.op_type == PLUGIN_NAME]
    assert len(plugins) == 2
    plain_path, surgered_path = folder / "model.fp16.onnx", folder / "model.fp16.plugin.onnx"
    onnx.save(fp16, str(plain_path))
    onnx.save(surgered, str(surgered_path))
    return plain_path, surgered_path


def test_surgered_fp16_graph_runs_like_unsurgered(fp16_graphs: tuple[Path, Path]) -> None:
    """ONNX Runtime runs the surgered FP16 graph (plugin nodes with FP16 features) and gives the
    unsurgered FP16 graph's detections; the file keeps its FP16 plugin nodes for TensorRT."""
    from maskrt.runtime import load_predictor
    from maskrt.training.shapes import generate_image

    plain_path, surgered_path = fp16_graphs
    images = [generate_image(0, "val", i)[0] for i in range(2)]
    # Both without ORT's layout transformations, so that they run the same convolution kernels
    # (see test_calibration's FP16 surgery test): then the only difference would be the pooling,
    # where ORT's RoiAlign and the plugin's CPU kernel give the same FP16 values, bit for bit.
    with load_predictor(plain_path, backend="onnxruntime", optimization="extended") as predictor:
        expected = predictor.predict(images)
    with load_predictor(surgered_path, backend="onnxruntime", optimization="extended") as predictor:
        got = predictor.predict(images)
    assert sum(len(d) for d in expected) > 0
    for e, g in zip(expected, got):
        assert len(g) == len(e)
        for name in ("labels", "boxes", "scores", "masks"):
            np.testing.assert_array_equal(getattr(g, name), getattr(e, name), err_msg=name)
