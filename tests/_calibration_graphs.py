"""Graphs the calibration tests share: a tiny hand-made ONNX graph, ONNX Runtime runs, the
element types shape inference gives, and the demo model's prediction layers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from maskrt import contract


def tiny_graph() -> onnx.ModelProto:
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


def copy_images(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` PNG images of ``src`` copied into ``dst`` (a calibration folder)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png"))[:n]:
        shutil.copy(p, dst / p.name)
    return dst


def run_ort(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, feeds)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


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
