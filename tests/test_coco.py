"""maskrt's COCO evaluation equals pycocotools called directly."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.coco import evaluate_detections, load_coco
from maskrt.detections import Detections
from maskrt.errors import MaskrtError


def _noisy_detections(coco: COCO, seed: int) -> dict[int, Detections]:
    """Ground truth perturbed: shifted boxes and masks, random scores, misses, false hits."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, img in coco.imgs.items():
        anns = [a for a in coco.imgToAnns[image_id] if rng.random() > 0.15]
        boxes, masks, labels = [], [], []
        for a in anns:
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, 2.0, size=4)
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            m = coco.annToMask(a).astype(bool)
            m = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(2)))
            masks.append(m)
            labels.append(a["category_id"] if rng.random() > 0.1 else 1 + (a["category_id"] % 3))
        if rng.random() < 0.5:  # a false positive
            boxes.append([1.0, 1.0, 20.0, 30.0])
            fp = np.zeros((img["height"], img["width"]), bool)
            fp[1:30, 1:20] = True
            masks.append(fp)
            labels.append(2)
        n = len(boxes)
        out[image_id] = Detections(
            boxes=np.asarray(boxes, np.float32).reshape(n, 4),
            scores=rng.random(n).astype(np.float32),
            labels=np.asarray(labels, np.int64),
            masks=np.stack(masks) if masks else np.zeros((0, img["height"], img["width"]), bool),
        )
    return out


def test_equals_pycocotools_directly(shapes_dataset: Path) -> None:
    ann = shapes_dataset / "annotations" / "instances_val.json"
    coco = load_coco(ann)
    dets = _noisy_detections(coco, seed=1)
    scores, results = evaluate_detections(coco, dets, with_masks=True)
    assert 0.2 < scores.stats["bbox"]["AP"] < 0.95  # a real, non-trivial score

    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(ann))
            ev = COCOeval(gt, gt.loadRes(results), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert [
            scores.stats[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        ] == list(ev.stats[:6])


def test_perfect_detections_score_one(shapes_dataset: Path) -> None:
    coco = load_coco(shapes_dataset / "annotations" / "instances_val.json")
    dets = {}
    for image_id in coco.imgs:
        anns = coco.imgToAnns[image_id]
        dets[image_id] = Detections(
            boxes=np.asarray(
                [
                    [
                        a["bbox"][0],
                        a["bbox"][1],
                        a["bbox"][0] + a["bbox"][2],
                        a["bbox"][1] + a["bbox"][3],
                    ]
                    for a in anns
                ],
                np.float32,
            ),
            scores=np.ones(len(anns), np.float32),
            labels=np.asarray([a["category_id"] for a in anns]),
            masks=np.stack([coco.annToMask(a).astype(bool) for a in anns]),
        )
    scores, _ = evaluate_detections(coco, dets, with_masks=True)
    # perfect detections: 1.0 up to pycocotools' float64 averaging (approx: relative 1e-6)
    assert scores.stats["bbox"]["AP"] == pytest.approx(1.0)
    assert scores.stats["segm"]["AP"] == pytest.approx(1.0)


def test_bad_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="does not exist"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(MaskrtError, match="not a COCO annotation file"):
        load_coco(tmp_path / "bad.json")
