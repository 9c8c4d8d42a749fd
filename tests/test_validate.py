"""maskrt validate: detection differences, the tolerance gate and the full table on the demo
model.

Oracles: pycocotools (through maskrt.coco) for AP; PyTorch FP32 as the reference the other rows
are compared with.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from maskrt.detections import Detections, match_detections
from maskrt.errors import MaskrtError
from maskrt.pipeline.main import main
from maskrt.pipeline.validate import (
    DEFAULT_TOLERANCES,
    Row,
    ValidationReport,
    detection_diffs,
    parse_tolerances,
)


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
    )


def test_matching_needs_label_and_iou_and_is_one_to_one() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 1, 2])
    other = _dets([[1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.85, 0.6, 0.5], [1, 2, 2])
    # ref 0 <-> other 0 (same label, IoU 0.82); ref 1 has no label-1 partner; ref 2 (label 2)
    # overlaps nothing of label 2
    assert match_detections(ref, other) == [(0, 0)]
    d = detection_diffs({1: ref}, {1: other})
    assert d.matched == 1 and d.reference == 3
    np.testing.assert_allclose(d.box, [0.5])  # |1-0| and |11-10| over 4 coordinates
    np.testing.assert_allclose(d.score, [0.05], atol=1e-6)  # float32 0.9 - 0.85: 4.8e-8 off
    assert d.summary()["matched"] == pytest.approx(1 / 3)
    assert d.summary()["matched_confident"] == pytest.approx(1 / 3)  # all three score >= 0.5


def test_confident_matches_count_only_confident_reference_detections() -> None:
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.3], [1, 1])
    only_low = _dets([[20, 20, 30, 30]], [0.3], [1])
    d = detection_diffs({1: ref}, {1: only_low})
    assert (d.matched, d.reference, d.confident_matched, d.confident) == (1, 2, 0, 1)
    assert d.summary()["matched_confident"] == 0.0
    assert detection_diffs({1: only_low}, {1: only_low}).summary()["matched_confident"] is None


def test_identical_detections_have_zero_differences() -> None:
    ref = _dets([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.3], [1, 3])
    d = detection_diffs({7: ref}, {7: ref})
    assert d.matched == 2 and not d.box.any() and not d.score.any()


def test_parse_tolerances() -> None:
    assert parse_tolerances(None) == DEFAULT_TOLERANCES
    assert parse_tolerances("int8=2, fp16=0.5") == {"fp32": 0.1, "fp16": 0.5, "int8": 2.0}
    for bad in ("int4=1", "fp32", "fp32=x", "fp16=-1"):
        with pytest.raises(MaskrtError):
            parse_tolerances(bad)


def test_report_gate_and_markdown() -> None:
    ref = Row("PyTorch FP32", "fp32", "torch", ap={"bbox": 0.5, "segm": 0.4}, latency_ms=3.0)
    ok = Row("ONNX FP16", "fp16", "onnxruntime", ap={"bbox": 0.501, "segm": 0.4},
             delta={"bbox": 0.1, "segm": 0.0}, tolerance=0.3, passed=True)  # fmt: skip
    bad = Row("ONNX INT8", "int8", "onnxruntime", ap={"bbox": 0.47, "segm": 0.4},
              delta={"bbox": -3.0, "segm": 0.0}, tolerance=1.5, passed=False)  # fmt: skip
    skipped = Row("TensorRT engines", "fp32", "tensorrt", note="TensorRT is not installed")
    report = ValidationReport([ref, ok, bad, skipped], 10, ["bbox", "segm"])
    assert not report.passed
    assert report.failures == ["ONNX INT8: bbox -3.00 (tolerance 1.5 AP points)"]
    md = report.markdown()
    assert "| ONNX INT8 | onnxruntime | 47.00 | 40.00 | -3.00 | +0.00 |" in md
    assert "FAIL" in md and "skipped: TensorRT is not installed" in md
    # with a budget D the INT8 gate is one-sided: a gain passes, a drop beyond D fails
    gain = Row("ONNX INT8", "int8", "onnxruntime", ap={"bbox": 0.52, "segm": 0.4},
               delta={"bbox": 2.0, "segm": -0.2}, tolerance=0.5, drop_only=True)  # fmt: skip
    assert gain.gate() and not replace(gain, drop_only=False).gate()
    gain.passed = gain.gate()
    assert ValidationReport([ref, gain], 10, ["bbox", "segm"]).passed
    gain.delta["segm"] = -0.6
    gain.passed = gain.gate()
    assert gain.passed is False
    assert ValidationReport([ref, gain], 10, ["bbox", "segm"]).failures == [
        "ONNX INT8: segm -0.60 (allowed drop 0.5 AP points)"
    ]
    assert "| drop ≤0.5 | FAIL |" in ValidationReport([ref, gain], 10, ["bbox"]).markdown()
    bad.groups = {"backbone1": "int8", "fpn": "int8", "box": "fp16"}
    assert "ONNX INT8 groups: backbone1 INT8, fpn INT8, box FP16." in report.markdown()
    assert json.loads(json.dumps(report.to_dict()))["passed"] is False


@pytest.mark.slow
def test_validate_demo_model_within_tolerances(
    demo_checkpoint: Path, heldout_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "validation"
    result = CliRunner().invoke(
        main,
        ["validate", str(demo_checkpoint), "--data", str(heldout_dataset), "--output", str(out),
         "--calib-images", "32"],
    )  # fmt: skip
    table = json.loads((out / "validation.json").read_text())
    assert table["num_images"] == 200
    assert (out / "validation.md").read_text().startswith("| artifact |")
    rows = {r["name"]: r for r in table["rows"]}
    expected = ["PyTorch FP32", "ONNX FP32", "ONNX FP32 surgered", "ONNX FP16",
                "ONNX INT8 (entropy)"]  # fmt: skip
    assert [n for n in rows if n in expected] == expected
    assert rows["PyTorch FP32"]["ap"]["bbox"] > 0.0  # the checkpoint detects something
    # AP on 200 held-out images, where the defaults hold with room: the INT8 graph's deltas
    # measured +0.13 bbox / +0.39 segm here, and -0.02..+0.49 / +0.08..+0.40 over calibration
    # sets of 16-128 images (3 draws each) on another 200, the same with onnxruntime 1.31.1 and
    # 1.32.0 (calibration/README.md). On the 24 images this test used before: +2.04 bbox.
    for name in expected[1:]:
        row = rows[name]
        assert row["ap"], f"{name}: {row['note']}"
        limit = DEFAULT_TOLERANCES[row["precision"]]
        for iou_type in ("bbox", "segm"):
            assert abs(row["delta"][iou_type]) <= limit, (name, iou_type, row["delta"])
    # Detection level. FP32 and FP16 keep every detection (measured: FP32 100 %, FP16 99.7 %
    # of all, 100 % of the confident ones, score >= 0.5); INT8 keeps the confident ones
    # (99.5 % here, 98.6-99.6 % in the sweep) while low-score ones come and go (83.6 %; 80.6-87.4).
    for name in expected[1:4]:
        assert rows[name]["matched"] > 0.99 and rows[name]["matched_confident"] == 1.0, name
    assert rows["ONNX FP32"]["box_diff_p95"] < 0.05  # px: same maths, float rounding only
    assert rows["ONNX INT8 (entropy)"]["matched_confident"] >= 0.97
    assert rows["ONNX INT8 (entropy)"]["matched"] >= 0.7
    groups = rows["ONNX INT8 (entropy)"]["groups"]  # made without --fp16-groups: all INT8
    assert list(groups)[-4:] == ["fpn", "rpn", "box", "mask"] and set(groups.values()) == {"int8"}
    assert "ONNX INT8 (entropy) groups: backbone1 INT8," in (out / "validation.md").read_text()
    assert table["passed"] is True
    assert result.exit_code == 0, result.output
