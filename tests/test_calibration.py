"""maskrt.calibration: FP32 islands, FP16 conversion, INT8 Q/DQ and the calibration cache.

Oracles: ONNX Runtime runs the FP32 and the converted graphs on the same inputs; the ONNX checker
and shape inference check the converted graphs' types; the structure is read from the graphs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from maskrt import contract
from maskrt.calibration import calibrate_fp16, convert_to_fp16, find_regions, quantize_to_int8
from maskrt.calibration.fp16 import collapse_cast_pairs
from maskrt.calibration.regions import (
    int8_nodes,
    is_unit,
    prediction_nodes,
    roi_head_tensors,
)
from maskrt.errors import MaskrtError
from maskrt.pipeline.main import main

# ----------------------------------------------------------------------------- a tiny graph


def _tiny_graph() -> onnx.ModelProto:
    """images -> normalise -> Conv -> Relu -> Conv -> {Exp -> Mul (decoding), Mul by 1e5}."""
    rng = np.random.default_rng(0)

    def init(name: str, a: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [
        init("mean", np.full((1, 3, 1, 1), 0.5)),
        init("std", np.full((1, 3, 1, 1), 0.25)),
        init("w1", rng.normal(0, 0.3, (4, 3, 3, 3))),
        init("b1", rng.normal(0, 0.1, (4,))),
        init("w2", rng.normal(0, 0.1, (2, 4, 1, 1))),
        init("scale", np.asarray(1000.5)),  # a coordinate scale FP16 would round
        init("big", np.asarray(1e5)),  # beyond FP16
    ]
    nodes = [
        helper.make_node("Sub", [contract.INPUT_IMAGES, "mean"], ["centred"], name="sub"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="div"),
        helper.make_node("Conv", ["normed", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["deltas"], name="conv2"),
        helper.make_node("Exp", ["deltas"], ["e"], name="exp"),
        helper.make_node("Mul", ["e", "scale"], ["boxes"], name="decode"),
        helper.make_node("Mul", ["r1", "big"], ["huge"], name="huge"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(contract.INPUT_IMAGES, TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 8, 8]),
            helper.make_tensor_value_info("huge", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    helper.set_model_props(model, {contract.META_MODEL_SPEC: "{}"})
    return model


def _run(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, feeds)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_regions_follow_data_flow() -> None:
    model = _tiny_graph()
    r = find_regions(model)
    names = {model.graph.node[i].name for i in r.feature_nodes}
    assert names == {"sub", "div", "conv1", "relu", "conv2"}  # not exp, decode, huge


def test_fp16_keeps_islands_fp32_and_matches_ort() -> None:
    model = _tiny_graph()
    fp16 = convert_to_fp16(model)
    onnx.checker.check_model(fp16, full_check=True)
    types = _types(fp16)
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
    ref = _run(model, {contract.INPUT_IMAGES: x})
    got = _run(fp16, {contract.INPUT_IMAGES: x})
    # FP16 rounds weights, the input and each activation (2**-11 relative each, four roundings on
    # the longest path); measured: 2.5e-4 of the output's range at worst (3.6 % relative on values
    # near 0), both with ORT 1.31.1 and 1.32.0. 1 % of the range bounds four roundings at any value.
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * np.abs(a).max())


def test_fp16_refuses_non_fp32_graphs() -> None:
    fp16 = convert_to_fp16(_tiny_graph())
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


# ----------------------------------------------------------------------------- a real deploy graph


@pytest.fixture(scope="module")
def deploy_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploy graph of a randomly initialised demo Mask R-CNN (structure, not accuracy)."""
    import torch

    from maskrt.export.exporter import export_onnx
    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("calib") / "model.onnx"
    export_onnx(build_model(demo_spec()), path, spec=demo_spec())
    return path


@pytest.fixture(scope="module")
def fp16_graph(deploy_graph: Path) -> Path:
    out = deploy_graph.with_name("model.fp16.onnx")
    calibrate_fp16(deploy_graph, out)
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_fp16_deploy_graph_types(deploy_graph: Path, fp16_graph: Path) -> None:
    model = onnx.load(str(fp16_graph))
    onnx.checker.check_model(model)
    types = _types(model)
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
    prod = _producers(model)
    for n in model.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT:
            up = prod.get(n.input[0])
            if up is not None and up.op_type == "Cast":
                assert types.get(up.input[0]) != TensorProto.FLOAT, n.name


def test_fp16_deploy_graph_runs_like_fp32(deploy_graph: Path, fp16_graph: Path) -> None:
    # random weights give near-tied scores, so compare the dense features, not detections:
    # the mask logits of the same boxes are what the FP16 part computes.
    x = np.random.default_rng(0).random((1, 3, 128, 160), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 150]], np.int32)}
    ref = _run(onnx.load(str(deploy_graph)), feeds)
    got = _run(onnx.load(str(fp16_graph)), feeds)
    assert got[0].tolist() == ref[0].tolist()  # num_detections
    assert np.isfinite(got[1]).all() and np.isfinite(got[4]).all()


def test_fp16_surgered_graph_feeds_fp16_features_to_the_plugin(fp16_graph: Path) -> None:
    surgery = pytest.importorskip("maskrt.plugins.surgery")
    from maskrt.plugins.ort import ort_session, upcast_plugin_nodes

    model, report = surgery.surgery(onnx.load(str(fp16_graph)))
    assert report.replaced == 2
    types = _types(model)
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
    ref = _run(onnx.load(str(fp16_graph)), feeds, same_kernels)
    assert upcast_plugin_nodes(model) == 2
    options = ort.SessionOptions()
    options.graph_optimization_level = same_kernels
    got = ort_session(model, options=options).run(None, feeds)
    assert ref[0].item() > 0  # detections to compare
    for name, g, r in zip(contract.output_names(True, False), got, ref):
        np.testing.assert_array_equal(g, r, err_msg=name)


# torchvision's prediction layers of the demo Mask R-CNN (what turns features into logits/deltas)
PREDICTION_WEIGHTS = {
    f"model.{m}.weight"
    for m in (
        "rpn.head.cls_logits",
        "rpn.head.bbox_pred",
        "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred",
        "roi_heads.mask_predictor.mask_fcn_logits",
    )
}


def test_prediction_layers_and_roi_heads_found_by_data_flow(deploy_graph: Path) -> None:
    model = onnx.load(str(deploy_graph))
    regions = find_regions(model)
    preds = [model.graph.node[i] for i in prediction_nodes(model, regions)]
    assert {n.input[1] for n in preds} == PREDICTION_WEIGHTS
    assert len(preds) == 2 * 4 + 2 + 1  # the RPN head runs once per feature map (3 FPN + pool)
    heads = roi_head_tensors(model, regions)
    assert any("box_head" in t for t in heads) and any("mask_head" in t for t in heads)
    assert not any("backbone" in t or "rpn" in t for t in heads)
    assert len(int8_nodes(model, regions)) == len(int8_nodes(model, regions, False)) - len(preds)


def _copy_images(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png"))[:n]:
        shutil.copy(p, dst / p.name)
    return dst


@pytest.mark.slow
def test_int8_qdq_placement_cache_and_surgery(
    deploy_graph: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    images = _copy_images(shapes_dataset / "train", tmp_path / "calib", 3)
    (images / "zz_broken.png").write_bytes(b"not a png")
    out, cache = tmp_path / "model.int8.onnx", tmp_path / "calib.json"
    summary = quantize_to_int8(deploy_graph, out, images, method="minmax", cache=cache)
    assert (summary.num_images, summary.skipped) == (3, 1)
    assert cache.is_file()

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = _producers(model)
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            readers[n.op_type] = readers.get(n.op_type, 0) + 1
            scale, zero = inits[dq.input[1]], inits[dq.input[2]]
            assert zero.dtype == np.int8 and not zero.any()  # symmetric INT8
            if dq.input[0] in inits:  # a weight: per output channel
                axis = 1 if n.op_type == "ConvTranspose" else 0
                assert scale.shape == (inits[dq.input[0]].shape[axis],)
            else:  # an activation: per tensor
                assert scale.shape == ()
    assert set(readers) <= {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}
    # fc6 and fc7 of the box head; the box predictor's two Gemms stay float
    # weight and input of each of the demo's 24 hidden Convs: trunk 12, FPN 6, the RPN's shared
    # conv once per feature map 4, mask head 2
    assert readers["Conv"] == 2 * 24 and readers["Gemm"] == 2 * 2
    for n in model.graph.node:
        if any(w in n.input for w in PREDICTION_WEIGHTS):
            sources = [prod[t].op_type for t in n.input if t in prod]
            assert "DequantizeLinear" not in sources, n.name
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.META_PRECISION] == "int8"

    # ORT runs it, and after surgery too
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 128]], np.int32)}
    assert _run(model, feeds)[1].shape == (1, 50, 4)
    surgery = pytest.importorskip("maskrt.plugins.surgery")
    surgered, report = surgery.surgery(model)
    assert report.replaced == 2
    from maskrt.plugins import ort_session

    assert ort_session(surgered).run(None, feeds)[1].shape == (1, 50, 4)

    # the cache is reused with the same key...
    again = quantize_to_int8(deploy_graph, out, images, method="minmax", cache=cache, force=True)
    assert "from cache" in again.cache_note
    # ...and found stale (then rewritten) when the images change
    (images / sorted(images.glob("*.png"))[0].name).unlink()
    stale = quantize_to_int8(deploy_graph, out, images, method="minmax", cache=cache, force=True)
    assert "stale" in stale.cache_note and "images changed" in stale.cache_note


def test_calibrate_cli_errors(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(_tiny_graph(), str(model))
    runner = CliRunner()
    out = tmp_path / "tiny.int8.onnx"
    r = runner.invoke(main, ["calibrate", str(model), "--precision", "int8", "-o", str(out)])
    assert r.exit_code == 1 and "--calib-data" in r.output
    r = runner.invoke(main, ["calibrate", str(tmp_path / "nope.onnx"), "--precision", "fp16",
                             "-o", str(out)])  # fmt: skip
    assert r.exit_code == 1 and "does not exist" in r.output
    fp16 = tmp_path / "tiny.fp16.onnx"
    r = runner.invoke(main, ["calibrate", str(model), "--precision", "fp16", "-o", str(fp16)])
    assert r.exit_code == 0, r.output
    assert onnx.load(str(fp16)).graph.node
    r = runner.invoke(main, ["calibrate", str(model), "--precision", "fp16", "-o", str(fp16)])
    assert r.exit_code == 1 and "--force" in r.output
