"""The export check (export/check.py) and its tie rule (export/ties.py): what it forgives (a
difference at a decision point whose competing quantities are within eps, eps measured on the
pairs) and what it refuses (anything else, and graphs computing something slightly different).

The oracle of the end-to-end cases is torchvision's eager module; the rule cases are built from
float32 values one ulp apart, through the same code the check runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_export_models import _model

from maskrt.errors import MaskrtError
from maskrt.export.check import (
    LOOSEST,
    TIGHTEST,
    Reference,
    StageComparison,
    Tolerances,
    check_against_eager,
    compare,
    run_graph,
    staged_check,
    tolerances_for,
    torchvision_reference,
)
from maskrt.export.exporter import build_onnx, check_inputs, resolve_spec
from maskrt.export.ties import Decisions, Epsilon, Ranked, explain, pair_by_position

RULES = Decisions(capacity=5, nms_iou=0.5, min_size=1e-2, score_thresh=0.0)
NO_ERROR = Epsilon(score_rel=0.0, box_px=0.0)


def _ranked(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None):
    n = len(scores)
    return Ranked(
        np.asarray(boxes, np.float32).reshape(n, 4),
        np.asarray(scores, np.float32),
        np.asarray(labels if labels is not None else [1] * n, np.int64),
    )


def _ulp_above(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(1)))


def _kinds(a: Ranked, b: Ranked, rules: Decisions = RULES, eps: Epsilon = NO_ERROR):
    pairs = pair_by_position(a, b)
    return {(d.side, d.index): d.kind for d in explain(a, b, pairs, rules, eps)}


# ------------------------------------------------------------------ the rule, constructed


def test_one_ulp_nms_order_tie_and_its_cascade_are_forgiven() -> None:
    """A and B overlap (IoU 0.6) and score one ulp apart: eager keeps A, the graph B. C overlaps
    B (IoU 0.6) but not A, scores clearly lower: kept only where B is missing (a cascade)."""
    a, b, c = [0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15.0, 10]
    far = [50, 50, 60, 60]
    s = 0.7
    eager = _ranked([far, a, c], [0.9, s, 0.3])
    graph = _ranked([far, b], [0.9, _ulp_above(s)])
    kinds = _kinds(eager, graph)
    assert kinds == {("a", 1): "nms", ("a", 2): "cascade", ("b", 1): "nms"}


def test_clear_gaps_are_refused() -> None:
    """The same boxes with a clear score gap between A and B: nothing is a tie."""
    a, b, c = [0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15.0, 10]
    eager = _ranked([a, c], [0.7, 0.3])
    graph = _ranked([b], [0.75])
    kinds = _kinds(eager, graph)
    assert kinds[("a", 0)] is None and kinds[("b", 0)] is None
    # a confident extra detection far from everything
    kinds = _kinds(_ranked([a], [0.9]), _ranked([a, [40, 40, 60, 60]], [0.9, 0.8]))
    assert kinds == {("b", 1): None}


def test_a_duplicated_detection_is_refused() -> None:
    """A second copy of a kept detection (same box, label, score) is no NMS tie: NMS keeps one
    of two such boxes, and the graph kept both."""
    a = [0, 0, 10, 10]
    kinds = _kinds(_ranked([a], [0.7]), _ranked([a, a], [0.7, 0.7]))
    assert kinds == {("b", 1): None}


def test_cut_of_a_full_list_within_eps() -> None:
    boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(6)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.5]
    eager = _ranked(boxes[:5], scores[:5])  # full (capacity 5): the last place tied exactly
    graph = _ranked(boxes[:4] + boxes[5:], scores[:4] + scores[5:])
    assert _kinds(eager, graph) == {("a", 4): "cut", ("b", 4): "cut"}
    # one ulp apart: a tie only within eps; with no error measured, only the ulps allowance
    graph = _ranked(boxes[:4] + boxes[5:], scores[:4] + [_ulp_above(0.5)])
    assert _kinds(eager, graph) == {("a", 4): "cut", ("b", 4): "cut"}
    graph = _ranked(boxes[:4] + boxes[5:], scores[:4] + [0.5001])
    assert _kinds(eager, graph)[("b", 4)] is None
    # eps comes from the pairs' errors: a 1e-4 relative error measured makes 0.5001 a tie
    assert _kinds(eager, graph, eps=Epsilon(score_rel=1e-4, box_px=0.0))[("b", 4)] == "cut"
    # a list that is not full cut nothing
    rules = Decisions(capacity=6, nms_iou=0.5, min_size=1e-2, score_thresh=0.0)
    assert _kinds(eager, graph, rules)[("b", 4)] is None


def test_small_box_filter_within_eps() -> None:
    a = [0, 0, 10, 10]
    thin = [20, 20, 20.01 + 2e-6, 30]  # 1e-2 px wide, the filter's minimum, plus rounding
    eps = Epsilon(score_rel=0.0, box_px=1e-6)
    assert _kinds(_ranked([a], [0.9]), _ranked([a, thin], [0.9, 0.8]), eps=eps) == {
        ("b", 1): "small box"
    }
    wide = [20, 20, 20.5, 30]
    assert _kinds(_ranked([a], [0.9]), _ranked([a, wide], [0.9, 0.8]), eps=eps) == {("b", 1): None}


def test_pairing_is_by_position_not_overlap() -> None:
    """Two different boxes overlapping by IoU > 0.5 are two detections, not one moved box."""
    a, a_shifted = [0, 0, 100, 100], [0, 0, 100, 80]
    assert pair_by_position(_ranked([a], [0.5]), _ranked([a_shifted], [0.5])) == []
    assert pair_by_position(_ranked([a], [0.5]), _ranked([[0.01, 0, 100, 100]], [0.5])) == [(0, 0)]


def test_stage_refuses_more_forgiven_than_paired() -> None:
    boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(4)]
    eager = _ranked(boxes[:2], [0.5, 0.5])
    graph = _ranked(boxes[2:], [0.5, 0.5])
    rules = Decisions(capacity=2, nms_iou=0.5, min_size=1e-2, score_thresh=0.0)
    with pytest.raises(MaskrtError, match="cannot tell ties from a defect"):
        StageComparison("detections", "label", [(eager, graph)], [rules]).decide()


def test_strict_comparison_refuses_moved_and_lone_detections() -> None:
    def ref(boxes: list[list[float]], scores: list[float]) -> Reference:
        r = _ranked(boxes, scores)
        return Reference(r.boxes, r.scores, r.groups, None, None, np.zeros((0, 4), np.float32))

    def graph(boxes: list[list[float]], scores: list[float], k: int = 3) -> dict[str, Any]:
        b = np.zeros((1, k, 4), np.float32)
        s = np.zeros((1, k), np.float32)
        b[0, : len(boxes)], s[0, : len(scores)] = boxes, scores
        labels = np.zeros((1, k), np.int32)
        labels[0, : len(scores)] = 1
        return {"num_detections": np.asarray([len(scores)], np.int32), "boxes": b,
                "scores": s, "labels": labels}  # fmt: skip

    a, b = [0, 0, 10, 10], [20, 20, 40, 40]
    tol = Tolerances(box_px=1e-3, score=1e-5, mask=1e-5, keypoint=1e-4)
    assert compare(graph([a, b], [0.9, 0.5]), [ref([a, b], [0.9, 0.5])], tol)[0] == 2
    with pytest.raises(MaskrtError, match="no counterpart"):
        compare(graph([a, b], [0.9, 0.5]), [ref([a], [0.9])], tol)
    with pytest.raises(MaskrtError, match="moved"):
        compare(graph([[0, 0, 10, 10.01]], [0.9]), [ref([a], [0.9])], tol)
    with pytest.raises(MaskrtError, match="moved"):
        compare(graph([a], [0.9001]), [ref([a], [0.9])], tol)


def test_tolerances_scale_float32_noise_within_bounds() -> None:
    zero = Tolerances(0.0, 0.0, 0.0, 0.0)
    assert tolerances_for(zero) == TIGHTEST
    assert tolerances_for(Tolerances(1.0, 1.0, 1.0, 1.0)) == LOOSEST
    mid = tolerances_for(Tolerances(1e-4, 1e-6, 1e-5, 1e-5))
    assert TIGHTEST.score < mid.score < LOOSEST.score and mid.box_px > TIGHTEST.box_px


# ------------------------------------------------------------------ end to end, torchvision


@pytest.fixture(scope="module")
def mask_model() -> Any:
    return _model("maskrcnn_resnet18_fpn_3_levels")


def _perturbed_graph(model: Any, parameter: str, factor: float):
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.get_parameter(parameter).mul_(factor)
    return build_onnx(twin), lambda debug: build_onnx(twin, with_proposals=debug)


@pytest.mark.parametrize(
    ("parameter", "factor", "stage"),
    [
        ("roi_heads.box_head.fc6.weight", 1 + 1e-3, "box head"),
        ("roi_heads.mask_head.0.0.weight", 1 + 1e-2, "mask head"),
    ],
)
def test_slightly_wrong_graphs_are_refused(
    mask_model: Any, parameter: str, factor: float, stage: str
) -> None:
    """A graph whose box-head weights are scaled by 1 + 1e-3 (scores move ~2e-4, boxes ~4e-3 px:
    under the fixed tolerances of before) or whose first mask-head convolution by 1 + 1e-2, is
    refused, and the message names the stage where it starts."""
    graph, rebuild = _perturbed_graph(mask_model, parameter, factor)
    inputs = check_inputs(resolve_spec(mask_model), None, None, None)
    with pytest.raises(MaskrtError, match=stage) as err:
        check_against_eager(graph, mask_model, inputs, rebuild)
    assert "\n" not in str(err.value)


def test_staged_check_on_exact_ties(tmp_path: Path) -> None:
    """MobileNet-V3 320 with random weights scores its detections exactly alike (one box-head
    output for every proposal), so which of them make the list is decided by ties alone. The
    staged comparison pairs what it can, forgives only ties, and agrees with the strict result
    where that passes."""
    model = _model("fasterrcnn_mobilenet_v3_large_320_fpn")
    spec = resolve_spec(model)
    images, sizes = check_inputs(spec, None, None, None)
    debug = run_graph(build_onnx(model, with_proposals=True), images.numpy(), sizes.numpy())
    refs = torchvision_reference(model, images, sizes)
    paired, forgiven, errors = staged_check(model, debug, images, sizes, refs)
    assert paired >= 20
    assert set(forgiven["detections"]) <= {"cut", "nms", "cascade"}
    assert errors[1] < 1e-5  # scores of paired detections


def test_check_images_cli(tmp_path: Path, random_demo_checkpoint: Path) -> None:
    """`maskrt export --check-images` checks on the user's images; a file that is no image is
    refused in one line before anything is traced, and nothing is written."""
    from maskrt.pipeline.main import main

    ckpt = random_demo_checkpoint
    rng = np.random.default_rng(0)
    pictures = []
    for i, size in enumerate(((150, 200), (180, 120))):
        yy, xx = np.mgrid[: size[0], : size[1]]
        im = np.stack([(xx * 3 + i * 40) % 256, (yy * 2) % 256, rng.integers(0, 256, size)], -1)
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(im.astype(np.uint8)).save(path)
        pictures += ["--check-images", str(path)]
    out = tmp_path / "model.onnx"
    done = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out), *pictures])
    assert done.exit_code == 0, done.output
    assert "checked against torchvision eager" in done.output and out.is_file()

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out2 = tmp_path / "model2.onnx"
    args = ["export", str(ckpt), "-o", str(out2), "--check-images", str(bad)]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1 and "cannot read" in done.output and not out2.exists()
    assert "Traceback" not in done.output and len(done.output.strip().splitlines()) == 1
