"""COCO accuracy of any artifact (checkpoint, ONNX, engine) through any runtime backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt.coco import CocoScores, evaluate_detections, load_coco, write_results
from maskrt.detections import Detections
from maskrt.errors import MaskrtError


@dataclass(frozen=True)
class EvalResult:
    scores: CocoScores
    results: list[dict[str, Any]]
    num_images: int


def evaluate_artifact(
    artifact: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    ann_file: str | os.PathLike[str],
    backend: str | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    json_out: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
    **backend_options: Any,
) -> EvalResult:
    """Run ``artifact`` over the images of ``ann_file`` and score it with pycocotools.

    ``backend`` None picks the artifact's natural backend (checkpoint: torch, .onnx:
    onnxruntime, .engine: tensorrt). ``limit`` evaluates only the first N images (by id).
    """
    from maskrt.runtime import load_predictor

    coco_gt = load_coco(ann_file)
    image_ids = sorted(coco_gt.getImgIds())[: limit if limit else None]
    if not image_ids:
        raise MaskrtError(f"{ann_file} lists no images")
    paths = [Path(images_dir) / coco_gt.imgs[i]["file_name"] for i in image_ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MaskrtError(f"{len(missing)} images of {ann_file} are missing, e.g. {missing[0]}")

    predictor = load_predictor(artifact, backend=backend, **backend_options)
    detections: dict[int, Detections] = {}
    for image_id, dets in zip(
        image_ids,
        predictor.predict_paths(paths, batch_size=batch_size, show_progress=show_progress),
    ):
        detections[image_id] = dets
    spec = predictor.spec
    scores, results = evaluate_detections(
        coco_gt, detections, with_masks=spec.has_masks, with_keypoints=spec.has_keypoints
    )
    if json_out is not None:
        write_results(json_out, results)
    return EvalResult(scores, results, len(image_ids))
