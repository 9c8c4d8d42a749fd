"""COCO evaluation with pycocotools, independent of who produced the detections.

Labels are COCO category ids (torchvision's COCO models and maskrt's datasets both use the
category id as the class index), so no mapping table is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .detections import Detections
from .errors import MaskrtError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def dataset_layout(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split`` in a dataset root laid out as maskrt writes
    it: ``ROOT/<split>/*.png`` and ``ROOT/annotations/instances_<split>.json``."""
    r = Path(root)
    return r / split, r / "annotations" / f"instances_{split}.json"


def split_paths(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """:func:`dataset_layout` of an existing split (what ``--data ROOT`` means to every verb);
    one-line MaskrtError when ``root`` has no such split."""
    images, ann = dataset_layout(root, split)
    if not ann.is_file() or not images.is_dir():
        raise MaskrtError(
            f"{root} is not a maskrt dataset root with a {split} split "
            f"(expected {images}/ and {ann}); make one with `maskrt data shapes {root}`"
        )
    return images, ann


def load_coco(ann_file: str | os.PathLike[str]) -> Any:
    """A ``pycocotools.coco.COCO`` for ``ann_file``, quietly, with one-line errors."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise MaskrtError(f"annotation file {path} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        # pycocotools asserts on a wrong top-level type
        raise MaskrtError(f"{path} is not a COCO annotation file ({e})") from None


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a binary mask [H, W], JSON-ready (counts as str)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_coco_results(image_id: int, dets: Detections) -> list[dict[str, Any]]:
    """COCO result records (bbox as x, y, w, h; RLE segmentation; keypoints) of one image."""
    results = []
    for i in range(len(dets)):
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        record: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(dets.labels[i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(dets.scores[i]),
        }
        if dets.masks is not None:
            record["segmentation"] = encode_mask(dets.masks[i])
        if dets.keypoints is not None:
            kp = dets.keypoints[i].copy()
            kp[:, 2] = 1.0  # COCO wants visibility flags, torchvision's third column is a score
            record["keypoints"] = [float(v) for v in kp.reshape(-1)]
        results.append(record)
    return results


@dataclass(frozen=True)
class CocoScores:
    """AP figures per IoU type ('bbox', 'segm', 'keypoints'), each a dict STAT_NAMES -> value."""

    stats: Mapping[str, Mapping[str, float]]

    def table(self) -> str:
        """The figures as a small aligned text table, one row per IoU type."""
        header = f"{'':<10}" + "".join(f"{n:>8}" for n in STAT_NAMES)
        rows = [
            f"{iou_type:<10}" + "".join(f"{v[n]:>8.3f}" for n in STAT_NAMES)
            for iou_type, v in self.stats.items()
        ]
        return "\n".join([header, *rows])

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.stats.items()}


def iou_types_for(with_masks: bool, with_keypoints: bool) -> list[str]:
    """The COCOeval IoU types that apply to a model's outputs."""
    return ["bbox"] + ["segm"] * with_masks + ["keypoints"] * with_keypoints


def evaluate_results(
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_types: Iterable[str],
    image_ids: Iterable[int] | None = None,
) -> CocoScores:
    """Run COCOeval for each IoU type over ``image_ids`` (default: every image of ``coco_gt``)."""
    from pycocotools.cocoeval import COCOeval

    ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    stats: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = coco_gt.loadRes(results)
                ev = COCOeval(coco_gt, coco_dt, iou_type)
                ev.params.imgIds = ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            values = [float(v) for v in ev.stats[: len(STAT_NAMES)]]
        else:
            values = [0.0] * len(STAT_NAMES)  # no detections at all: nothing found
        stats[iou_type] = dict(zip(STAT_NAMES, values))
    return CocoScores(stats)


def evaluate_detections(
    coco_gt: Any,
    detections: Mapping[int, Detections],
    with_masks: bool,
    with_keypoints: bool = False,
) -> tuple[CocoScores, list[dict[str, Any]]]:
    """Evaluate per-image detections against ``coco_gt``; return the scores and the results."""
    results = [r for image_id, dets in detections.items() for r in to_coco_results(image_id, dets)]
    types = iou_types_for(with_masks, with_keypoints)
    return evaluate_results(coco_gt, results, types, image_ids=detections.keys()), results


def write_results(path: str | os.PathLike[str], results: list[dict[str, Any]]) -> None:
    from .fileio import atomic_write_text

    atomic_write_text(path, json.dumps(results))
