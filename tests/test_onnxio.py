"""maskrt.onnxio: ONNX files in and out with one-line errors, metadata, custom ops.

Oracles: the onnx library (loading, the checker) and the bytes on disk.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from maskrt import contract
from maskrt.errors import InternalError, MaskrtError
from maskrt.onnxio import (
    custom_op_types,
    load_onnx,
    metadata,
    read_spec,
    save_onnx,
    set_metadata,
)
from maskrt.specs import demo_spec


def _graph(op_type: str = "Relu", domain: str = "") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)
    model.ir_version = 10
    return model


def test_load_refuses_what_is_not_a_model_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    onnx.save(_graph(), str(good))
    assert load_onnx(good).graph.node[0].op_type == "Relu"
    cases = {
        "missing.onnx": None,
        "text.onnx": b"hello, I am not protobuf",
        "empty.onnx": b"",
        "truncated.onnx": good.read_bytes()[:-7],
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(MaskrtError) as err:
            load_onnx(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(MaskrtError, match="not a maskrt deploy graph"):
        load_onnx(good, deploy_graph=True)


def test_checker_failure_is_one_line(tmp_path: Path) -> None:
    bad = _graph()
    bad.graph.node[0].input[0] = "nowhere"  # reads a tensor nothing produces
    path = tmp_path / "bad.onnx"
    onnx.save(bad, str(path))
    load_onnx(path)  # loads unchecked
    with pytest.raises(MaskrtError, match="not a valid ONNX model") as err:
        load_onnx(path, check=True)
    assert "\n" not in str(err.value)


def test_save_is_checked_atomic_and_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "out" / "m.onnx"
    model = _graph()
    model.ir_version = 99  # newer than maskrt writes: capped
    save_onnx(model, path)
    assert onnx.load(str(path)).ir_version <= 10
    before = path.read_bytes()
    with pytest.raises(MaskrtError, match="--force"):
        save_onnx(_graph("Sigmoid"), path)
    assert path.read_bytes() == before
    save_onnx(_graph("Sigmoid"), path, force=True)
    assert onnx.load(str(path)).graph.node[0].op_type == "Sigmoid"
    broken = _graph()
    broken.graph.node[0].input[0] = "nowhere"
    with pytest.raises(InternalError, match="ONNX checker"):  # our graph, our bug
        save_onnx(broken, path, force=True)
    assert onnx.load(str(path)).graph.node[0].op_type == "Sigmoid"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no temporary left


def test_metadata_and_spec(tmp_path: Path) -> None:
    model = _graph()
    set_metadata(model, a="1", b="2")
    set_metadata(model, b="3")
    assert metadata(model) == {"a": "1", "b": "3"}
    path = tmp_path / "m.onnx"
    set_metadata(
        model,
        **{
            contract.META_MODEL_SPEC: demo_spec().to_json(),
            contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION,
        },
    )
    save_onnx(model, path)
    assert read_spec(path) == demo_spec()
    set_metadata(model, **{contract.META_CONTRACT_VERSION: "0"})
    save_onnx(model, path, force=True)
    with pytest.raises(MaskrtError, match="re-export"):
        read_spec(path)
    set_metadata(model, **{contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION})
    set_metadata(model, **{contract.META_MODEL_SPEC: '{"arch": "yolo"}'})
    save_onnx(model, path, force=True)
    with pytest.raises(MaskrtError, match="bad model spec"):
        read_spec(path)


def test_custom_op_types_leave_out_builtin_and_local_functions() -> None:
    assert custom_op_types(_graph()) == set()
    assert custom_op_types(_graph("MultilevelRoIAlign", "maskrt.plugins")) == {"MultilevelRoIAlign"}
    model = _graph("Local", "maskrt.local")
    model.functions.append(
        helper.make_function(
            "maskrt.local",
            "Local",
            ["x"],
            ["y"],
            [helper.make_node("Relu", ["x"], ["y"])],
            [helper.make_opsetid("", 17)],
        )
    )
    assert custom_op_types(model) == set()
