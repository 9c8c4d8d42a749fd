"""COCO AP of any multiset of images from one COCOeval run, for paired bootstrap intervals.

``COCOeval.evaluate`` matches detections to ground truth per (category, area range, image);
``accumulate`` then pools the chosen images. Re-running COCOeval for every bootstrap resample
would cost seconds each, and its ``accumulate`` cannot take an image twice. :func:`pooled_ap`
redoes only the pooling (area "all", 100 detections, pycocotools' 101 recall points and
precision envelope) over a list of image positions that may repeat, so a resample costs
milliseconds; with every image once it gives COCOeval's own AP (tested against pycocotools).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PerImageEval:
    """COCOeval's per-image matches of one IoU type, for pooling: ``entries[k][i]`` the
    evaluation of category k on image position i (None: neither detections nor ground truth)."""

    entries: list[list[dict[str, Any] | None]]
    iou_thresholds: np.ndarray  # [T]
    recall_thresholds: np.ndarray  # [R]
    max_dets: int


def per_image_eval(
    coco_gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: Sequence[int]
) -> PerImageEval:
    """Run COCOeval's matching once over ``image_ids``; positions index them in sorted order
    (COCOeval sorts them)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes refuses an empty list: a detection of no category then stands for none
        coco_dt = coco_gt.loadRes(results or [_no_detection(coco_gt)])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)  # area range 0 is "all"
    entries = [
        [ev.evalImgs[k * n_area * n_img + i] for i in range(n_img)] for k in range(len(p.catIds))
    ]
    return PerImageEval(entries, np.asarray(p.iouThrs), np.asarray(p.recThrs), p.maxDets[-1])


def _no_detection(coco_gt: Any) -> dict[str, Any]:
    image_id = next(iter(coco_gt.imgs))
    return {"image_id": image_id, "category_id": -1, "bbox": [0, 0, 1, 1], "score": 0.0}


def pooled_ap(ev: PerImageEval, positions: Sequence[int] | np.ndarray) -> float:
    """AP@[.5:.95] (area all, ``max_dets`` detections) of the images at ``positions``
    (repeats count again), as ``COCOeval.accumulate`` + ``summarize`` compute it."""
    per_category = []
    for cat in ev.entries:
        chosen = [e for e in (cat[i] for i in positions) if e is not None]
        if not chosen:
            continue
        gt_ignore = np.concatenate([e["gtIgnore"] for e in chosen]).astype(bool)
        n_gt = int(np.count_nonzero(~gt_ignore))
        if n_gt == 0:
            continue
        scores = np.concatenate([e["dtScores"][: ev.max_dets] for e in chosen])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([e["dtMatches"][:, : ev.max_dets] for e in chosen], axis=1)
        ignored = np.concatenate([e["dtIgnore"][:, : ev.max_dets] for e in chosen], axis=1)
        matched, ignored = matched[:, order], ignored[:, order].astype(bool)
        tp = np.cumsum((matched != 0) & ~ignored, axis=1, dtype=np.float64)
        fp = np.cumsum((matched == 0) & ~ignored, axis=1, dtype=np.float64)
        precisions = np.zeros((len(ev.iou_thresholds), len(ev.recall_thresholds)))
        for t in range(len(ev.iou_thresholds)):
            recall = tp[t] / n_gt
            precision = tp[t] / (tp[t] + fp[t] + np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
            idx = np.searchsorted(recall, ev.recall_thresholds, side="left")
            valid = idx < len(precision)
            precisions[t, valid] = precision[idx[valid]]
        per_category.append(precisions)
    return float(np.mean(per_category)) if per_category else -1.0


@dataclass(frozen=True)
class PairedDelta:
    """AP difference (AP points) of a candidate to a reference on the same images: the point
    estimate and a percentile interval over paired bootstrap resamples of the images."""

    delta: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"delta": self.delta, "low": self.low, "high": self.high}


def paired_delta(
    candidate: PerImageEval,
    reference: PerImageEval,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDelta:
    """ΔAP = candidate − reference in AP points with a ``level`` percentile interval: each
    resample draws the images with replacement and scores both on the same draw."""
    n = len(reference.entries[0]) if reference.entries else 0
    everything = np.arange(n)
    point = 100.0 * (pooled_ap(candidate, everything) - pooled_ap(reference, everything))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(resamples):
        draw = rng.integers(0, n, n)
        deltas.append(100.0 * (pooled_ap(candidate, draw) - pooled_ap(reference, draw)))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return PairedDelta(point, float(low), float(high))


def paired_deltas(
    candidate: Mapping[str, PerImageEval], reference: Mapping[str, PerImageEval], **kw: Any
) -> dict[str, PairedDelta]:
    """:func:`paired_delta` for every IoU type of ``reference``."""
    return {t: paired_delta(candidate[t], reference[t], **kw) for t in reference}
