"""maskrt.detections: box IoU, one-to-one matching and "the same detections".

Oracle: torchvision's box_iou; the matching rule is checked on hand-made cases.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou as tv_box_iou

from maskrt.detections import Detections, box_iou, match_detections, same_detections


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
    )


boxes_st = st.lists(
    st.tuples(*[st.floats(0, 100, allow_nan=False)] * 2, *[st.floats(0.5, 50)] * 2),
    min_size=1,
    max_size=6,
).map(lambda b: np.asarray([[x, y, x + w, y + h] for x, y, w, h in b], np.float64))


@settings(max_examples=50, deadline=None)
@given(boxes_st, boxes_st)
def test_box_iou_matches_torchvision(a: np.ndarray, b: np.ndarray) -> None:
    expected = tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    # float64 on both sides: measured 0; 1e-9 allows another operation order
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-9, atol=1e-12)


def test_same_detections_means_all_paired_and_no_extra() -> None:
    """bench's "identical detections": the validate matcher pairs every detection, both ways."""
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 2])
    shifted = _dets([[20, 21, 30, 31], [1, 0, 11, 10]], [0.79, 0.91], [2, 1])  # order differs
    assert same_detections(ref, shifted)
    assert not same_detections(ref, _dets([[0, 0, 10, 10]], [0.9], [1]))  # one missing
    extra = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.1], [1, 2, 1])
    assert not same_detections(ref, extra)
    assert not same_detections(ref, _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 1]))
    empty = _dets([], [], [])
    assert same_detections(empty, empty) and not same_detections(ref, empty)


def test_matching_goes_by_descending_reference_score() -> None:
    """The most confident reference detection takes its best partner first; a weaker one that
    overlaps the same box more is left with what remains (here nothing above the IoU)."""
    ref = _dets([[0, 0, 10, 10], [1, 0, 11, 10]], [0.6, 0.9], [1, 1])
    other = _dets([[0, 0, 10, 10]], [0.7], [1])
    # ref 1 (score 0.9, IoU 0.82) is served before ref 0 (score 0.6, IoU 1.0)
    assert match_detections(ref, other) == [(1, 0)]
    # below the IoU threshold nothing pairs, whatever the scores
    assert (
        match_detections(_dets([[0, 0, 10, 10]], [0.9], [1]), _dets([[6, 0, 16, 10]], [0.9], [1]))
        == []
    )
