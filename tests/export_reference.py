"""Test helpers for the export tests: torchvision's own pipeline as the oracle.

* :func:`preprocess` turns RGB uint8 images into the deploy graph's inputs the way torchvision's
  GeneralizedRCNNTransform resizes (bilinear, align_corners=False, recompute_scale_factor=True),
  padding with the spec's mean to a multiple of 32.
* :func:`torchvision_reference` (the export's own check, :mod:`maskrt.export.check`) runs
  model.backbone / model.rpn / model.roi_heads on the same normalised, zero-padded tensor,
  returning detections before mask pasting.
* :func:`match_detections` pairs graph and reference detections and reports the worst errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskrt.contract import SIZE_DIVISIBLE
from maskrt.export.check import Reference, torchvision_reference

__all__ = ["Reference", "torchvision_reference"]
from maskrt.specs import ModelSpec


def resized_size(h: int, w: int, spec: ModelSpec) -> tuple[int, int]:
    """torchvision's resize rule: scale the short side to min_size, the long one to <= max_size."""
    scale = min(spec.min_size / min(h, w), spec.max_size / max(h, w))
    out = F.interpolate(
        torch.zeros(1, 1, h, w),
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )
    return int(out.shape[-2]), int(out.shape[-1])


def preprocess(
    images: list[np.ndarray], spec: ModelSpec, pad_to: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 [H, W, 3] images -> (images [B, 3, H', W'] float32, image_sizes [B, 2] int32).

    Pixels are in [0, 1], resized like torchvision, and padded with ``spec.image_mean`` to a
    common multiple of 32 (or to ``pad_to``).
    """
    resized = []
    for img in images:
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        h, w = t.shape[-2:]
        scale = min(spec.min_size / min(h, w), spec.max_size / max(h, w))
        t = F.interpolate(
            t[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        resized.append(t)
    sizes = torch.tensor([list(t.shape[-2:]) for t in resized], dtype=torch.int32)
    if pad_to is None:
        d = SIZE_DIVISIBLE
        pad_to = (
            int(-(-int(sizes[:, 0].max()) // d) * d),
            int(-(-int(sizes[:, 1].max()) // d) * d),
        )
    mean = torch.tensor(spec.image_mean).reshape(3, 1, 1)
    batch = mean.expand(len(images), 3, *pad_to).clone()
    for i, t in enumerate(resized):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch.contiguous(), sizes


def box_size(boxes: np.ndarray) -> np.ndarray:
    """The larger side of each box [N, 4], at least 1 px."""
    return np.maximum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 1.0)


@dataclass
class Match:
    num_graph: int
    num_reference: int
    unmatched: int
    box_err: float
    score_err: float
    mask_err: float
    keypoint_err: float


def match_detections(
    graph: dict[str, np.ndarray],
    index: int,
    ref: Reference,
    box_tol: float = 1e-3,
    score_tol: float = 1e-4,
    box_rtol: float = 0.0,
) -> Match:
    """Pair image ``index``'s graph detections with the reference (same label, box and score
    within tolerance) and return counts and the worst errors of the pairs.

    A box coordinate matches within ``box_tol + box_rtol * (larger side of the reference box)``;
    ``box_err`` is the worst error in pixels.
    """
    n = int(graph["num_detections"][index])
    boxes = graph["boxes"][index, :n]
    scores = graph["scores"][index, :n]
    labels = graph["labels"][index, :n]
    used = np.zeros(n, bool)
    unmatched = 0
    box_err = score_err = mask_err = kp_err = 0.0
    for i in range(len(ref.scores)):
        tol = box_tol + box_rtol * box_size(ref.boxes[i : i + 1])[0]
        cand = np.where(
            (~used)
            & (labels == ref.labels[i])
            & (np.abs(boxes - ref.boxes[i]).max(axis=1) <= tol)
            & (np.abs(scores - ref.scores[i]) <= score_tol)
        )[0]
        if len(cand) == 0:
            unmatched += 1
            continue
        j = cand[np.argmin(np.abs(boxes[cand] - ref.boxes[i]).max(axis=1))]
        used[j] = True
        box_err = max(box_err, float(np.abs(boxes[j] - ref.boxes[i]).max()))
        score_err = max(score_err, float(abs(scores[j] - ref.scores[i])))
        if ref.masks is not None:
            mask_err = max(mask_err, float(np.abs(graph["masks"][index, j] - ref.masks[i]).max()))
        if ref.keypoint_logits is not None:
            kp = graph["keypoint_logits"][index, j]
            kp_err = max(kp_err, float(np.abs(kp - ref.keypoint_logits[i]).max()))
    return Match(n, len(ref.scores), unmatched, box_err, score_err, mask_err, kp_err)
