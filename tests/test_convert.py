"""`maskrt convert` chains the stages and stops honestly where TensorRT is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.pipeline.convert import convert, tensorrt_missing
from maskrt.pipeline.main import main
from maskrt.runtime import load_predictor
from maskrt.training.shapes import generate_image


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed: the build runs")
def test_fp32_chain_stops_after_surgery_without_tensorrt(
    random_demo_checkpoint: Path, tmp_path: Path
) -> None:
    result = convert(random_demo_checkpoint, tmp_path, precision="fp32", log=lambda m: None)
    assert result.engine is None and "TensorRT is not installed" in result.note
    surgered = onnx.load(str(result.surgered))
    meta = {p.key: p.value for p in surgered.metadata_props}
    assert meta[contract.META_SURGERED] == "1"
    assert not any(n.domain == "maskrt" for n in surgered.graph.node)  # units were replaced
    # The TensorRT input runs on the CPU (plugin CPU twin) and answers like the plain graph.
    images = [generate_image(1, "val", i)[0] for i in range(2)]
    plain = load_predictor(result.graph, backend="onnxruntime").predict(images)
    ours = load_predictor(result.surgered, backend="onnxruntime").predict(images)
    for a, b in zip(plain, ours):
        assert len(a) == len(b) > 0
        # measured 0 (ORT 1.31.1 and 1.32.0): the plugin's CPU twin and ORT's RoiAlign give the same
        # FP32 values; 1e-4 px leaves room for a kernel that sums in another order
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_refuses_to_overwrite_and_needs_calibration_data(
    random_demo_checkpoint: Path, tmp_path: Path
) -> None:
    (tmp_path / "model.fp32.onnx").write_bytes(b"keep")
    with pytest.raises(MaskrtError, match="--force"):
        convert(random_demo_checkpoint, tmp_path, log=lambda m: None)
    assert (tmp_path / "model.fp32.onnx").read_bytes() == b"keep"
    with pytest.raises(MaskrtError, match="--calib-data"):
        convert(random_demo_checkpoint, tmp_path / "x", precision="int8", log=lambda m: None)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "none.pt"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
