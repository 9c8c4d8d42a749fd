"""Per-image detections in original-image coordinates: what every backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Two detections of two runs are the same object when their labels agree and IoU exceeds this.
MATCH_IOU = 0.5


@dataclass
class Detections:
    """Detections of one image, sorted by descending score.

    boxes      float32 [N, 4]      x1, y1, x2, y2 in original-image pixels
    scores     float32 [N]
    labels     int64   [N]         1..num_classes-1
    masks      bool    [N, H, W]   pasted masks (probability > 0.5), or None (no mask head)
    keypoints  float32 [N, K, 3]   x, y, visibility score, or None (no keypoint head)
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, height: int, width: int, with_masks: bool, num_keypoints: int = 0) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            masks=np.zeros((0, height, width), bool) if with_masks else None,
            keypoints=np.zeros((0, num_keypoints, 3), np.float32) if num_keypoints else None,
        )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2): [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(
    ref: Detections, other: Detections, iou_threshold: float = MATCH_IOU
) -> list[tuple[int, int]]:
    """One-to-one (ref index, other index) pairs: each reference detection, in descending score,
    takes the unmatched detection of the same label with the highest IoU above the threshold."""
    if len(ref) == 0 or len(other) == 0:
        return []
    iou = box_iou(ref.boxes.astype(np.float64), other.boxes.astype(np.float64))
    iou[ref.labels[:, None] != other.labels[None, :]] = 0.0
    taken = np.zeros(len(other), bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        cand = np.where(~taken & (iou[i] > iou_threshold), iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] > iou_threshold:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


def same_detections(a: Detections, b: Detections, iou_threshold: float = MATCH_IOU) -> bool:
    """Whether two runs found the same objects: as many detections, all paired one-to-one by
    :func:`match_detections` (the rule ``maskrt validate`` counts matches by)."""
    return len(a) == len(b) and len(match_detections(a, b, iou_threshold)) == len(a)
