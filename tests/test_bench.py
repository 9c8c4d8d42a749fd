"""The benchmark harness measures what it claims: both sides agree with torchvision.

Only behaviour is asserted here (agreement, report structure, errors); the figures themselves
belong in BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskrt.coco import split_paths
from maskrt.pipeline.bench import PASTE_CASES, bench_end_to_end, bench_paste_masks, format_report
from maskrt.pipeline.main import main


def _val_images(root: Path, count: int) -> list[np.ndarray]:
    image_dir, _ = split_paths(root, "val")
    paths = sorted(image_dir.glob("*.png"))[:count]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_end_to_end_sides_agree_with_torchvision(
    demo_checkpoint: Path, shapes_dataset: Path
) -> None:
    images = _val_images(shapes_dataset, 4)
    report = bench_end_to_end(
        images,
        checkpoint=demo_checkpoint,
        reps=1,
        batch_sizes=(1, 2),
        precisions=("fp32", "fp16"),
        measure_memory=False,
        log=lambda _: None,
    )
    assert set(report["batches"]) == {"1", "2"}
    for entry in report["batches"].values():
        # The FP32 deploy graph gives torchvision's detections on every image.
        assert entry["identical_detections"]["maskrt onnxruntime fp32"] == "4/4"
        assert set(entry["sides"]) == {
            "torchvision eager",
            "maskrt onnxruntime fp32",
            "maskrt onnxruntime fp16",
        }
        for side in entry["sides"].values():
            assert side["total"]["median"] > 0 and side["images_per_s"] > 0
    text = format_report(report)
    assert "maskrt onnxruntime fp16" in text and "identical detections 4/4" in text


@pytest.mark.parametrize("kind", PASTE_CASES)
def test_paste_bench_compares_identical_masks(kind: str) -> None:
    result = bench_paste_masks(num=12, image_size=(120, 200), reps=2, kind=kind)
    assert result["masks"] == kind and result["identical"] is True
    assert result["speedup"] > 0


def test_bench_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["bench"])
    assert r.exit_code == 1 and "--arch" in r.output
    r = runner.invoke(main, ["bench", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(main, ["bench", "--arch", "demo_maskrcnn", "--precision", "int8"])
    assert r.exit_code == 1 and "--calib-data" in r.output
    assert "Traceback" not in r.output


def test_peak_rss_children_hold_only_their_side(
    demo_checkpoint: Path, shapes_dataset: Path
) -> None:
    """Each side's peak RSS comes from a fresh process that loads only what that side needs:
    the ONNX Runtime side never imports torch (it reads its spec from the graph)."""
    report = bench_end_to_end(
        _val_images(shapes_dataset, 2),
        checkpoint=demo_checkpoint,
        reps=1,
        batch_sizes=(1,),
        log=lambda _: None,
    )
    assert report["peak_rss_loaded_torch"] == {
        "torchvision eager": True,
        "maskrt onnxruntime fp32": False,
    }
    assert all(rss > 50 for rss in report["peak_rss_mib"].values())
    assert "Peak RSS" in format_report(report)
