"""``maskrt calibrate``: one-line errors, and no overwrite without --force."""

from __future__ import annotations

from pathlib import Path

import onnx
from _calibration_graphs import tiny_graph
from click.testing import CliRunner

from maskrt.pipeline.main import main


def test_calibrate_cli_errors(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_graph(), str(model))
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
