"""User errors and maskrt's own bugs are told apart: one root for bad input
(:class:`~maskrt.errors.MaskrtError`), :class:`~maskrt.errors.InternalError` outside it, and the
CLI reports the second as a bug with how to get the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from maskrt.errors import DEBUG_ENV, InternalError, MaskrtError
from maskrt.pipeline.main import main
from maskrt.specs import SpecError, parse_factory_args


def test_spec_errors_are_user_errors() -> None:
    with pytest.raises(MaskrtError, match="key=value"):
        parse_factory_args(["no-equals-sign"])
    assert issubclass(SpecError, MaskrtError)
    assert not issubclass(InternalError, MaskrtError)


def test_a_bad_factory_argument_is_one_line_on_the_cli(tmp_path: Path) -> None:
    """SpecError reaches the CLI as it is (no re-wrap) and is printed as one line."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    result = CliRunner().invoke(
        main,
        ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--model-factory",
         "pkg.mod:fn", "--factory-arg", "no-equals-sign"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: factory argument must be key=value, got 'no-equals-sign'"
    ]


def test_a_graph_maskrt_cannot_order_is_an_internal_error() -> None:
    """calibration's toposort on a cycle it would have made itself: a bug, not bad input."""
    import onnx
    from onnx import TensorProto, helper

    from maskrt.calibration.graphs import toposort

    graph = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
        "cycle",
        [],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
    )
    assert isinstance(graph, onnx.GraphProto)
    with pytest.raises(InternalError, match="cycle or unproduced tensors"):
        toposort(graph)


def _bug(*_args: object, **_kwargs: object) -> None:
    raise InternalError("the shapes writer lost an image")


def test_the_cli_reports_an_internal_error_as_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in bug inside a real verb: one line that says it is maskrt's and how to get the
    traceback; with the debug variable set, the traceback itself."""
    import maskrt.training.shapes

    monkeypatch.setattr(maskrt.training.shapes, "make_shapes_dataset", _bug)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    result = CliRunner().invoke(main, ["data", "shapes", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: internal error in maskrt (a bug; please report it): the shapes writer lost an "
        f"image (set {DEBUG_ENV}=1 for the traceback)"
    ]
    monkeypatch.setenv(DEBUG_ENV, "1")
    result = CliRunner().invoke(main, ["data", "shapes", str(tmp_path / "d")])
    assert isinstance(result.exception, InternalError)
