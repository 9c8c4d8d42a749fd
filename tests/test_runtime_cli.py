"""``maskrt infer`` and ``maskrt build`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskrt.pipeline.main import main
from maskrt.specs import demo_spec


def _write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((100, 130), (90, 90))):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_infer_writes_json_and_overlays(tmp_path: Path, random_demo_checkpoint: Path) -> None:
    images = _write_images(tmp_path / "images")
    out = tmp_path / "out"
    args = [
        "infer",
        str(random_demo_checkpoint),
        str(tmp_path / "images"),
        "--output",
        str(out),
        "--score-threshold",
        "0",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "images.json").read_text())
    assert [r["file_name"] for r in records] == [str(p) for p in images]
    assert [(r["height"], r["width"]) for r in records] == [(100, 130), (90, 90)]
    dets = json.loads((out / "detections.json").read_text())
    assert dets, "random weights with threshold 0 give detections"
    assert {d["image_id"] for d in dets} <= {1, 2}
    first = dets[0]
    assert set(first) >= {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert first["segmentation"]["size"] in ([100, 130], [90, 90])
    for i, p in enumerate(images):
        png = np.asarray(Image.open(out / "overlays" / f"{p.stem}.png"))
        assert png.shape == (records[i]["height"], records[i]["width"], 3)
    # Overlays show the detections: the image with detections changed.
    drawn = np.asarray(Image.open(out / "overlays" / "img0.png"))
    assert not np.array_equal(drawn, np.asarray(Image.open(images[0])))
    # Refuses to overwrite without --force, in one line.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0


def test_infer_missing_image_is_one_line(tmp_path: Path, random_demo_checkpoint: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "infer",
            str(random_demo_checkpoint),
            str(tmp_path / "nope.jpg"),
            "--output",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "nope.jpg does not exist" in lines[0]
    missing_model = CliRunner().invoke(
        main, ["infer", str(tmp_path / "m.pt"), str(tmp_path), "--output", str(tmp_path / "o")]
    )
    assert missing_model.exit_code == 1 and len(missing_model.output.strip().splitlines()) == 1


def test_build_without_tensorrt_is_one_line(tmp_path: Path) -> None:
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    import onnx
    from _runtime_fakes import fake_deploy_graph

    model = tmp_path / "m.onnx"
    onnx.save(fake_deploy_graph(demo_spec().replace(box_detections_per_img=4)), model)
    result = CliRunner().invoke(main, ["build", str(model), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: TensorRT is not installed; install maskrt[trt] on a machine with TensorRT"
    )
    bad = CliRunner().invoke(
        main, ["build", str(model), "-o", str(tmp_path / "m.engine"), "--opt", "images:9x3x64x64"]
    )
    assert bad.exit_code == 1 and "min <= opt <= max" in bad.output
