"""``calibrate --max-ap-drop``: the paired bootstrap's AP against pycocotools, a group made
sensitive on purpose found and kept in FP16, and a budget above the drop keeping every group
INT8 (the plain graph, byte for byte).

Oracles: pycocotools' COCOeval (AP), the shipped demo model's INT8 graph evaluated on held-out
images by ONNX Runtime, and the plain ``quantize_to_int8`` graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from maskrt import contract
from maskrt.calibration.bootstrap import paired_delta, per_image_eval, pooled_ap
from maskrt.calibration.groups import find_groups
from maskrt.calibration.int8 import activation_inputs, quantize_to_int8
from maskrt.calibration.regions import MATMUL_OPS, find_regions, fold_identity_constants, name_nodes
from maskrt.calibration.search import report_path
from maskrt.coco import evaluate_results, load_coco, split_paths
from maskrt.pipeline.main import main

EVAL_IMAGES = 40


def _jittered_results(coco_gt, seed: int) -> list[dict]:
    """Ground truth boxes moved by a few pixels, with random scores and some dropped."""
    rng = np.random.default_rng(seed)
    out = []
    for a in coco_gt.dataset["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        dx, dy, dw, dh = rng.normal(0, 2.0, 4)
        box = [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                    "score": float(rng.random())})  # fmt: skip
    return out


def test_pooled_ap_is_cocoevals_ap_and_the_interval_holds_the_point(
    heldout_dataset: Path,
) -> None:
    _, ann = split_paths(heldout_dataset, "val")
    coco_gt = load_coco(ann)
    ids = sorted(coco_gt.getImgIds())[:60]
    a, b = _jittered_results(coco_gt, 1), _jittered_results(coco_gt, 2)
    for results in (a, b):
        ev = per_image_eval(coco_gt, results, "bbox", ids)
        want = evaluate_results(coco_gt, results, ["bbox"], ids).stats["bbox"]["AP"]
        assert pooled_ap(ev, np.arange(len(ids))) == pytest.approx(want, abs=1e-12)
        half = ids[::2]
        want_half = evaluate_results(coco_gt, results, ["bbox"], half).stats["bbox"]["AP"]
        assert pooled_ap(ev, np.arange(0, len(ids), 2)) == pytest.approx(want_half, abs=1e-12)
    ea, eb = per_image_eval(coco_gt, a, "bbox", ids), per_image_eval(coco_gt, b, "bbox", ids)
    d = paired_delta(ea, eb, resamples=200)
    assert d.low <= d.delta <= d.high and d.high - d.low > 0
    same = paired_delta(ea, ea, resamples=50)  # paired: a graph against itself is exactly 0
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def shipped_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export.exporter import export_onnx
    from maskrt.training.shipped import shipped_demo_checkpoint

    spec, model = load_checkpoint(shipped_demo_checkpoint())
    path = tmp_path_factory.mktemp("shipped") / "demo.onnx"
    export_onnx(model, path, spec=spec)
    return path


def _spoil(graph: Path, cache: Path, group: str, factor: float) -> int:
    """Shrink the cached ranges of ``group``'s INT8 inputs (the cache key is unchanged)."""
    model = onnx.load(str(graph))
    fold_identity_constants(model)
    name_nodes(model)
    nodes = find_groups(model, find_regions(model))[group]
    names = [model.graph.node[i].name for i in nodes if model.graph.node[i].op_type in MATMUL_OPS]
    payload = json.loads(cache.read_text())
    data = payload["ranges"]["data"]
    spoiled = 0
    for t in activation_inputs(model, names) & set(data):
        for end in ("lowest", "highest"):
            data[t][end]["data"] = [v * factor for v in data[t][end]["data"]]
        spoiled += 1
    cache.write_text(json.dumps(payload))
    return spoiled


def _calibrate(args: list[str]) -> str:
    r = CliRunner().invoke(main, ["calibrate", *args])
    assert r.exit_code == 0, r.output
    return r.output


def _plain_int8(graph: Path, calib: str, tmp_path: Path) -> tuple[Path, Path]:
    """(calibration cache, plain INT8 graph): MinMax on the held-out calibration images."""
    cache, plain = tmp_path / "calib.json", tmp_path / "plain.int8.onnx"
    quantize_to_int8(graph, plain, calib, method="minmax", cache=cache)
    return cache, plain


@pytest.mark.slow
def test_a_group_made_sensitive_is_found_and_kept_fp16(
    shipped_graph: Path, heldout_dataset: Path, tmp_path: Path
) -> None:
    calib = str(heldout_dataset / "train")
    cache, _ = _plain_int8(shipped_graph, calib, tmp_path)
    assert _spoil(shipped_graph, cache, "box", 0.02) >= 2  # fc6 and fc7 inputs clip hard

    out = tmp_path / "searched.onnx"
    text = _calibrate([str(shipped_graph), "--precision", "int8", "--calib-data", calib,
                       "--method", "minmax", "--cache", str(cache), "--max-ap-drop", "1.0",
                       "--eval-data", str(heldout_dataset), "--eval-images", str(EVAL_IMAGES),
                       "-o", str(out)])  # fmt: skip
    report = json.loads(report_path(out).read_text())
    costs = {g["group"]: g["cost"] for g in report["groups"]}
    assert max(costs, key=costs.get) == "box"
    assert "box" in report["fp16_groups"] and "box" in text
    # the spoiled graph loses far more than the budget; the answer met it on the choice half
    assert all(-d["delta"] > 5.0 for d in report["all_int8"].values())
    assert all(-d <= 1.0 for d in report["choice_delta"].values())
    assert report["final"]["bbox"]["delta"] > report["all_int8"]["bbox"]["delta"] + 5.0
    for d in report["final"].values():
        assert d["low"] <= d["delta"] <= d["high"]
    assert (report["choice_images"], report["report_images"]) == (20, 20)
    assert 0.0 < report["int8_mac_share"] < report["all_int8_mac_share"] < 1.0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[contract.META_PRECISION_GROUPS])["box"] == "fp16"


@pytest.mark.slow
def test_a_budget_above_the_drop_keeps_every_group_int8(
    shipped_graph: Path, heldout_dataset: Path, tmp_path: Path
) -> None:
    calib = str(heldout_dataset / "train")
    cache, plain = _plain_int8(shipped_graph, calib, tmp_path)
    out = tmp_path / "searched.onnx"
    _calibrate([str(shipped_graph), "--precision", "int8", "--calib-data", calib, "--method",
                "minmax", "--cache", str(cache), "--max-ap-drop", "50", "--eval-data",
                str(heldout_dataset), "--eval-images", "8", "-o", str(out)])  # fmt: skip
    report = json.loads(report_path(out).read_text())
    assert report["fp16_groups"] == [] and report["met"]
    assert all(g["cost"] is None and g["precision"] == "int8" for g in report["groups"])
    assert len(report["trials"]) == 1  # the all-INT8 graph alone
    assert out.read_bytes() == plain.read_bytes()

    r = CliRunner().invoke(main, ["calibrate", str(shipped_graph), "--precision", "int8",
                                  "--calib-data", calib, "--max-ap-drop", "1", "-o",
                                  str(tmp_path / "x.onnx")])  # fmt: skip
    assert r.exit_code == 1 and "--eval-data" in r.output
    r = CliRunner().invoke(main, ["calibrate", str(shipped_graph), "--precision", "int8",
                                  "--calib-data", calib, "--max-ap-drop", "1", "--fp16-groups",
                                  "box", "--eval-data", str(heldout_dataset), "-o",
                                  str(tmp_path / "x.onnx")])  # fmt: skip
    assert r.exit_code == 1 and "not both" in r.output
    bad = tmp_path / "x.onnx"
    r = CliRunner().invoke(main, ["calibrate", str(shipped_graph), "--precision", "int8",
                                  "--calib-data", calib, "--max-ap-drop", "-1", "--eval-data",
                                  str(heldout_dataset), "-o", str(bad)])  # fmt: skip
    assert r.exit_code == 1 and "at least 0" in r.output
