"""The TensorRT graph check (:mod:`maskrt.plugins.tensorrt_check`): TensorRT's documented limits
(NvInfer.h ITopKLayer K up to 3840, INMSLayer 5000 boxes per batch item; onnx-tensorrt's
operators.md ops, types and opsets) found in small graphs at their exact boundaries, then in real
deploy graphs, and ``maskrt build`` refusing them in one line where TensorRT is not installed.

No TensorRT runs here: the oracle for a limit is NVIDIA's header and documentation (cited in the
module), for outputs ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from maskrt import contract
from maskrt.plugins.contract import PLUGIN_DOMAIN, PLUGIN_NAME
from maskrt.plugins.tensorrt_check import (
    NMS_MAX_BOXES,
    TOPK_MAX_K,
    require_tensorrt_ready,
    tensorrt_findings,
)
from maskrt.specs import demo_spec

OPSET = 17


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    meta: dict[str, str] | None = None,
    opset: int = OPSET,
    functions: list[onnx.FunctionProto] = (),  # type: ignore[assignment]
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
        functions=list(functions),
    )
    model.ir_version = 10
    if meta:
        helper.set_model_props(model, meta)
    return model


def _topk(k: int, sorted_: int = 1, meta: dict[str, str] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 10000])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, k])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [2, k])
    kt = numpy_helper.from_array(np.array([k], dtype=np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, sorted=sorted_)
    return _model([node], [x], [v, i], [kt], meta=meta)


def _nms(items: int, boxes_per_item: int | str, classes: int = 1) -> onnx.ModelProto:
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [items, boxes_per_item, 4])
    scores = helper.make_tensor_value_info(
        "scores", TensorProto.FLOAT, [items, classes, boxes_per_item]
    )
    sel = helper.make_tensor_value_info("sel", TensorProto.INT64, ["S", 3])
    m = numpy_helper.from_array(np.array([100], dtype=np.int64), "m")
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "m"], ["sel"])
    return _model([node], [boxes, scores], [sel], [m])


def _spec_meta(**changes: Any) -> dict[str, str]:
    return {
        contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION,
        contract.META_MODEL_SPEC: demo_spec().replace(**changes).to_json(),
    }


def test_topk_limit_at_its_boundary() -> None:
    assert tensorrt_findings(_topk(TOPK_MAX_K)) == []
    (line,) = tensorrt_findings(_topk(TOPK_MAX_K + 1))
    assert "TopK K=3841" in line and "3840" in line and "spec field" not in line


def test_topk_names_the_spec_fields() -> None:
    meta = _spec_meta(rpn_pre_nms_top_n_test=4000, rpn_post_nms_top_n_test=4000)
    (line,) = tensorrt_findings(_topk(4000, meta=meta))
    assert "rpn_pre_nms_top_n_test=4000 or rpn_post_nms_top_n_test=4000" in line
    (line,) = tensorrt_findings(_topk(5000, meta=_spec_meta(box_detections_per_img=5000)))
    assert "spec field box_detections_per_img=5000" in line


def test_unsorted_topk() -> None:
    (line,) = tensorrt_findings(_topk(10, sorted_=0))
    assert "sorted=0" in line


def test_nms_batch_item_limit_at_its_boundary() -> None:
    assert tensorrt_findings(_nms(10, NMS_MAX_BOXES)) == []
    (line,) = tensorrt_findings(_nms(10, NMS_MAX_BOXES + 1))
    assert "5001 boxes per batch item" in line and "5000" in line
    # only the scores say how many boxes: still found
    model = _nms(10, NMS_MAX_BOXES + 1)
    model.graph.input[0].CopyFrom(
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["NB", "N", 4])
    )
    assert len(tensorrt_findings(model)) == 1
    assert tensorrt_findings(_nms(10, "N")) == []  # unknown: nothing to say


def test_ops_the_parser_does_not_take() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])
    nodes = [
        helper.make_node("Unique", ["x"], ["y"]),  # "N" in operators.md
        helper.make_node("Mystery", ["x"], ["z"], domain="my.domain"),
        helper.make_node(PLUGIN_NAME, ["x"], ["w"], domain=PLUGIN_DOMAIN),  # the plugin: fine
    ]
    lines = tensorrt_findings(_model(nodes, [x], [y, z, w]))
    assert len(lines) == 2
    assert lines[0].startswith("op Unique (1 node(s))")
    assert lines[1].startswith("op my.domain::Mystery (1 node(s))")


def _calling_function(body: list[onnx.NodeProto]) -> onnx.ModelProto:
    """A model whose one node calls a local function ``my.domain::Fn`` (a -> b) of ``body``."""
    fn = helper.make_function(
        "my.domain", "Fn", ["a"], ["b"], body, [helper.make_opsetid("", OPSET)]
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    node = helper.make_node("Fn", ["x"], ["y"], domain="my.domain")
    model = _model([node], [x], [y], functions=[fn])
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    return model


def test_local_functions_are_inlined_and_checked() -> None:
    model = _calling_function([helper.make_node("Unique", ["a"], ["b"])])
    (line,) = tensorrt_findings(model)  # the function itself is fine, its Unique is not
    assert line.startswith("op Unique")


def test_bodies_inside_local_functions_are_checked() -> None:
    """An If inside a function, with a Unique two bodies deep: found in each of the 2 x 2
    branches."""
    inner = helper.make_graph(
        [helper.make_node("Unique", ["a"], ["u"])],
        "inner",
        [],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, [None])],
    )
    outer = helper.make_graph(
        [helper.make_node("If", ["c"], ["v"], then_branch=inner, else_branch=inner)],
        "outer",
        [],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [None])],
    )
    body = [
        helper.make_node("ReduceMax", ["a"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["c"], to=TensorProto.BOOL),
        helper.make_node("If", ["c"], ["b"], then_branch=outer, else_branch=outer),
    ]
    lines = [ln for ln in tensorrt_findings(_calling_function(body)) if ln.startswith("op Unique")]
    assert len(lines) == 1 and lines[0].startswith("op Unique (4 node(s))"), lines


def test_types_and_opsets() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [4])  # UINT8 input: taken
    d = helper.make_tensor_value_info("d", TensorProto.DOUBLE, [4])
    u = helper.make_tensor_value_info("u", TensorProto.UINT8, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [
        helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["u"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT),
    ]
    model = _model(nodes, [x], [y])
    model.graph.value_info.extend([d, u])
    lines = tensorrt_findings(model)
    assert len(lines) == 2
    assert lines[0].startswith("UINT8 tensors inside the network (1, e.g. 'u')")
    assert lines[1].startswith("DOUBLE tensors (1, e.g. 'd')") and "FLOAT" in lines[1]

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    assert tensorrt_findings(_model([helper.make_node("Relu", ["a"], ["b"])], [a], [b])) == []
    newer = _model([helper.make_node("Relu", ["a"], ["b"])], [a], [b], opset=21)
    (line,) = tensorrt_findings(newer)
    assert line.startswith("opset 21")


def test_compact_heads_flag_and_one_line_refusal() -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    relu = [helper.make_node("Relu", ["a"], ["b"])]
    meta = {**_spec_meta(), contract.META_COMPACT_HEADS: "1"}
    (line,) = tensorrt_findings(_model(relu, [a], [b], meta=meta))
    assert "--compact-heads" in line and "`maskrt export` without --compact-heads" in line
    meta[contract.META_COMPACT_HEADS] = "0"
    assert tensorrt_findings(_model(relu, [a], [b], meta=meta)) == []

    from maskrt.errors import MaskrtError

    bad = _topk(4000, meta=_spec_meta(rpn_pre_nms_top_n_test=4000))
    with pytest.raises(MaskrtError) as e:
        require_tensorrt_ready(bad, "m.onnx")
    assert "\n" not in str(e.value) and str(e.value).startswith("m.onnx is not ready for TensorRT")
    require_tensorrt_ready(_topk(100), "m.onnx")


# ----------------------------------------------------------------------------------------------
# real deploy graphs


@pytest.fixture(scope="module")
def past_limits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A demo deploy graph (random weights, 128-px example) whose spec asks for 4000 proposals
    per level: TopK past TensorRT's 3840, each RPN NMS batch item within 5000."""
    import torch

    from maskrt.export.exporter import build_onnx
    from maskrt.onnxio import save_onnx
    from maskrt.specs import build_model

    torch.manual_seed(0)
    spec = demo_spec().replace(rpn_pre_nms_top_n_test=4000, rpn_post_nms_top_n_test=1000)
    model = build_onnx(build_model(spec), spec=spec, height=128, width=128)
    path = tmp_path_factory.mktemp("limits") / "pre4000.onnx"
    save_onnx(model, path)
    return path, model


@pytest.mark.slow
def test_rpn_nms_batch_items_are_image_level_pairs(past_limits: tuple[Path, Any]) -> None:
    """Each (image, level) is its own NMS batch item: 4000 boxes, not 4 maps * 4000 in one
    item (which TensorRT would cut to its best 5000). The box head's items hold the proposals."""
    _, model = past_limits
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    }
    nms = [n for n in inferred.graph.node if n.op_type == "NonMaxSuppression"]
    assert [shapes[n.input[0]][1:] for n in nms] == [[4000, 4], [1000, 4]]
    assert [shapes[n.input[1]][1:] for n in nms] == [[1, 4000], [1, 1000]]
    (line,) = tensorrt_findings(model)
    # one TopK per RPN feature map: the demo model's 3 FPN levels and the pooled map
    assert line.startswith("TopK K=4000 (4 node(s)) is above TensorRT's limit of 3840")
    assert line.endswith("(spec field rpn_pre_nms_top_n_test=4000)")


def _maskrt(*args: str) -> Any:
    from maskrt.pipeline.main import main

    return CliRunner().invoke(main, list(args))


def _no_tensorrt() -> None:
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass


@pytest.mark.slow
def test_build_names_the_limit_and_spec_field_without_tensorrt(
    past_limits: tuple[Path, Any], tmp_path: Path
) -> None:
    _no_tensorrt()
    path, _ = past_limits
    engine = tmp_path / "m.engine"
    result = _maskrt("build", str(path), "-o", str(engine))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(f"Error: {path} is not ready for TensorRT: TopK K=4000")
    assert "rpn_pre_nms_top_n_test=4000" in lines[0]
    assert not engine.exists()

    # surgery writes the graph and warns; its output is refused by build the same way
    surgered = tmp_path / "m.trt.onnx"
    result = _maskrt("surgery", str(path), "-o", str(surgered))
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning: TensorRT:")]
    assert len(warnings) == 1 and "rpn_pre_nms_top_n_test=4000" in warnings[0]
    result = _maskrt("build", str(surgered), "-o", str(engine))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "TopK K=4000" in result.output


@pytest.mark.slow
def test_build_refuses_compact_heads_graph(tmp_path: Path) -> None:
    import torch

    from maskrt.export.exporter import build_onnx
    from maskrt.onnxio import save_onnx
    from maskrt.specs import build_model

    _no_tensorrt()
    torch.manual_seed(0)
    spec = demo_spec()
    model = build_onnx(build_model(spec), spec=spec, height=128, width=128, compact_heads=True)
    assert {p.key: p.value for p in model.metadata_props}[contract.META_COMPACT_HEADS] == "1"
    path = tmp_path / "compact.onnx"
    save_onnx(model, path)
    result = _maskrt("build", str(path), "-o", str(tmp_path / "m.engine"))
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "--compact-heads" in line and "`maskrt export` without --compact-heads" in line
