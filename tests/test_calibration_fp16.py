"""maskrt.calibration.fp16: FP32 islands, FP16 conversion, and FP16 deploy graphs before and
after surgery.

Oracles: ONNX Runtime runs the FP32 and the converted graphs on the same inputs; the ONNX checker
and shape inference check the converted graphs' types.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _calibration_graphs import elem_types, producers, run_ort, tiny_graph
from onnx import TensorProto, helper

from maskrt import contract
from maskrt.calibration import calibrate_fp16, convert_to_fp16
from maskrt.calibration.fp16 import collapse_cast_pairs
from maskrt.calibration.regions import is_unit
from maskrt.errors import MaskrtError


def test_fp16_keeps_islands_fp32_and_matches_ort() -> None:
    model = tiny_graph()
    fp16 = convert_to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    types = elem_types(fp16)
    by_name = {n.name: n for n in fp16.graph.node}
    assert types[by_name["conv1"].input[1]] == TensorProto.FLOAT16
    assert types[by_name["conv2"].output[0]] == TensorProto.FLOAT16
    for name in ("exp", "decode", "huge"):
        assert all(types[t] == TensorProto.FLOAT for t in by_name[name].input)
    # Exp feeds the decoding Mul directly: no FP16 round trip between two FP32 nodes
    assert by_name["decode"].input[0] == by_name["exp"].output[0]
    assert [types[o.name] for o in fp16.graph.output] == [TensorProto.FLOAT] * 2
    meta = {p.key: p.value for p in fp16.metadata_props}
    assert meta[contract.META_PRECISION] == "fp16"

    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    ref = run_ort(model, {contract.INPUT_IMAGES: x})
    got = run_ort(fp16, {contract.INPUT_IMAGES: x})
    # FP16 rounds weights, the input and each activation (2**-11 relative each, four roundings on
    # the longest path); measured: 2.5e-4 of the output's range at worst (3.6 % relative on values
    # near 0), both with ORT 1.31.1 and 1.32.0. 1 % of the range bounds four roundings at any value.
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * np.abs(a).max())


def test_fp16_refuses_non_fp32_graphs() -> None:
    fp16 = convert_to_fp16(tiny_graph())
    with pytest.raises(MaskrtError, match="fp32"):
        convert_to_fp16(fp16)


def test_collapse_cast_pairs_only_removes_lossy_round_trips() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    i = helper.make_tensor_value_info("i", TensorProto.INT32, [2])
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["i"], ["i16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["i16"], ["i32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x32", "i32"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [x, i], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert collapse_cast_pairs(model) == 1
    assert list(model.graph.node[-1].input) == ["x", "i32"]  # int -> fp16 -> fp32 is kept


@pytest.fixture(scope="module")
def fp16_graph(random_demo_deploy_graph: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    calibrate_fp16(random_demo_deploy_graph, out)
    return out


def test_fp16_deploy_graph_types(random_demo_deploy_graph: Path, fp16_graph: Path) -> None:
    model = onnx.load(str(fp16_graph))
    onnx.checker.check_model(model)
    types = elem_types(model)
    assert [types[i.name] for i in model.graph.input] == [TensorProto.FLOAT, TensorProto.INT32]
    outputs = {o.name: types[o.name] for o in model.graph.output}
    assert outputs[contract.OUTPUT_BOXES] == outputs[contract.OUTPUT_MASKS] == TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "ConvTranspose")]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    for n in model.graph.node:
        if n.op_type in ("Exp", "NonMaxSuppression", "TopK", "Softmax", "Sigmoid"):
            floats = [
                t for t in n.input if types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16)
            ]
            assert all(types[t] == TensorProto.FLOAT for t in floats), n.name
    units = [n for n in model.graph.node if is_unit(n)]
    assert len(units) == 2
    for u in units:  # FP16 features in and out, FP32 RoIs
        assert [types[t] for t in u.input] == [TensorProto.FLOAT16] * 3 + [TensorProto.FLOAT]
        assert types[u.output[0]] == TensorProto.FLOAT16
    # no FP32 -> FP16 -> FP32 round trips anywhere
    prod = producers(model)
    for n in model.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT:
            up = prod.get(n.input[0])
            if up is not None and up.op_type == "Cast":
                assert types.get(up.input[0]) != TensorProto.FLOAT, n.name


def test_fp16_deploy_graph_runs_like_fp32(random_demo_deploy_graph: Path, fp16_graph: Path) -> None:
    # random weights give near-tied scores, so compare the dense features, not detections:
    # the mask logits of the same boxes are what the FP16 part computes.
    x = np.random.default_rng(0).random((1, 3, 128, 160), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 150]], np.int32)}
    ref = run_ort(onnx.load(str(random_demo_deploy_graph)), feeds)
    got = run_ort(onnx.load(str(fp16_graph)), feeds)
    assert got[0].tolist() == ref[0].tolist()  # num_detections
    assert np.isfinite(got[1]).all() and np.isfinite(got[4]).all()


def test_fp16_surgered_graph_feeds_fp16_features_to_the_plugin(fp16_graph: Path) -> None:
    surgery = pytest.importorskip("maskrt.plugins.surgery")
    from maskrt.plugins.ort import ort_session, upcast_plugin_nodes

    model, report = surgery.surgery(onnx.load(str(fp16_graph)))
    assert report.replaced == 2
    types = elem_types(model)
    plugins = [n for n in model.graph.node if is_unit(n)]
    assert len(plugins) == 2
    for p in plugins:
        assert [types[t] for t in p.input] == [TensorProto.FLOAT16] * 3 + [TensorProto.FLOAT]
        assert types[p.output[0]] == TensorProto.FLOAT16

    # ONNX Runtime runs it (the plugin nodes upcast in memory, as the ORT backend does) and
    # gives the unsurgered FP16 graph's outputs bit for bit. Why exact: ORT's CPU provider runs
    # the FP16 convolutions in FP32 between inserted Casts, both graphs round to FP16 at the same
    # tensors, and the plugin's CPU twin and ORT's RoiAlign interpolate in FP32 with the same
    # arithmetic before the one rounding to FP16 (0 of 1.57 M pooled values differ, ORT 1.31.1
    # and 1.32.0). Both sessions stop at ORT_ENABLE_EXTENDED: at ORT_ENABLE_ALL the NCHWc layout
    # transformer picks each convolution's kernel from the graph around it, and picked a
    # different one for the FPN output convolutions of the two graphs; the other summation
    # order changed 0.6 % of the FPN features by one FP16 ulp, which RPN, box and mask heads
    # carried to 6.9e-4 px on boxes and 8.5e-4 (AVX-512; 1.1e-3 on an AVX2 machine) on mask
    # probabilities. That is ORT's kernel choice, not the plugin, and no ulp count bounds it.
    x = np.random.default_rng(0).random((1, 3, 128, 160), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 150]], np.int32)}
    same_kernels = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ref = run_ort(onnx.load(str(fp16_graph)), feeds, same_kernels)
    assert upcast_plugin_nodes(model) == 2
    options = ort.SessionOptions()
    options.graph_optimization_level = same_kernels
    got = ort_session(model, options=options).run(None, feeds)
    assert ref[0].item() > 0  # detections to compare
    for name, g, r in zip(contract.output_names(True, False), got, ref):
        np.testing.assert_array_equal(g, r, err_msg=name)
