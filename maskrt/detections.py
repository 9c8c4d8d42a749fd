"""Per-image detections in original-image coordinates: what every backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
