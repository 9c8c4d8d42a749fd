"""A hand-made graph that honours maskrt's deploy contract, for runtime tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from maskrt import contract
from maskrt.specs import ModelSpec


def fake_deploy_graph(spec: ModelSpec, seed: int = 0) -> onnx.ModelProto:
    """A tiny graph honouring the deploy contract (inputs, outputs, metadata).

    boxes are fixed fractions of each image's resized size; num_detections is
    min(K, resized height // 16); scores, labels and mask logits are constants; so every
    output depends on the inputs the way a real graph's would (shape and image_sizes).
    """
    rng = np.random.default_rng(seed)
    k = spec.box_detections_per_img
    frac = np.sort(rng.uniform(0.05, 0.95, (1, k, 2, 2)), axis=2).transpose(0, 1, 3, 2)
    frac = frac.reshape(1, k, 4).astype(np.float32)  # x1, x2, y1, y2 -> reorder below
    frac = frac[:, :, [0, 2, 1, 3]].copy()
    consts = {
        "frac": frac,
        "scores_c": np.sort(rng.random((1, k), dtype=np.float32))[:, ::-1].copy(),
        "labels_c": rng.integers(1, spec.num_classes, (1, k)).astype(np.int32),
        "masks_c": rng.random((1, k, 28, 28), dtype=np.float32),
        "wh_idx": np.array([1, 0, 1, 0], np.int64),
        "k_c": np.array([k], np.int32),
        "sixteen": np.array([16], np.int32),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "row": np.array([0], np.int64),
        "tail4": np.array([k, 4], np.int64),
        "tailk": np.array([k], np.int64),
        "tailm": np.array([k, 28, 28], np.int64),
    }
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
    n = helper.make_node
    nodes = [
        n("Shape", ["images"], ["shape"]),
        n("Slice", ["shape", "zero", "one"], ["b"]),
        n("Concat", ["b", "tailk"], ["bk"], axis=0),
        n("Concat", ["b", "tail4"], ["bk4"], axis=0),
        n("Concat", ["b", "tailm"], ["bkm"], axis=0),
        n("Gather", ["image_sizes", "wh_idx"], ["whwh_i"], axis=1),
        n("Cast", ["whwh_i"], ["whwh"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["whwh", "one"], ["whwh3"]),
        n("Mul", ["frac", "whwh3"], ["boxes"]),
        n("Gather", ["image_sizes", "row"], ["h_col"], axis=1),
        n("Squeeze", ["h_col", "one"], ["h"]),
        n("Div", ["h", "sixteen"], ["h16"]),
        n("Min", ["h16", "k_c"], ["num_detections"]),
        n("Expand", ["scores_c", "bk"], ["scores"]),
        n("Expand", ["labels_c", "bk"], ["labels"]),
        n("Expand", ["masks_c", "bkm"], ["masks"]),
    ]
    specs = contract.io_specs(k, spec.has_masks, spec.has_keypoints)
    types = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}
    vi = [helper.make_tensor_value_info(s.name, types[s.dtype], list(s.shape)) for s in specs]
    graph = helper.make_graph(nodes, "fake_deploy", vi[:2], vi[2:], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION,
            contract.META_MODEL_SPEC: spec.to_json(),
            contract.META_PRECISION: "fp32",
            contract.META_SURGERED: "0",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model
