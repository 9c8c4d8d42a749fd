"""``maskrt infer``: run an artifact on image files, write COCO-format JSON and overlays."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt.coco import to_coco_results
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, atomic_write_text, check_writable

from .images import expand_image_paths, read_image
from .overlay import draw_detections
from .predictor import filter_by_score, load_predictor

DETECTIONS_JSON = "detections.json"
IMAGES_JSON = "images.json"
OVERLAY_DIR = "overlays"


@dataclass(frozen=True)
class InferResult:
    detections_json: Path
    images_json: Path
    overlays: list[Path]
    num_detections: int


def _overlay_names(paths: list[Path]) -> list[str]:
    """One PNG name per image, made unique when two inputs share a stem."""
    names, seen = [], set()
    for i, p in enumerate(paths):
        name = f"{p.stem}.png"
        if name in seen:
            name = f"{p.stem}_{i}.png"
        seen.add(name)
        names.append(name)
    return names


def run_inference(
    artifact: str | os.PathLike[str],
    inputs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    backend: str | None = None,
    batch_size: int = 1,
    score_threshold: float = 0.5,
    force: bool = False,
    show_progress: bool = False,
    **backend_options: Any,
) -> InferResult:
    """Detect on ``inputs`` (files or folders) and write, under ``out_dir``:

    ``detections.json`` (COCO results: image_id, category_id, bbox, score, RLE segmentation),
    ``images.json`` (COCO image records: id, file_name, height, width) and one overlay PNG per
    image in ``overlays/``. Refuses to overwrite without ``force``.
    """
    paths = expand_image_paths(list(inputs))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MaskrtError(f"{out} exists and is not a folder")
    det_json = check_writable(out / DETECTIONS_JSON, force)
    img_json = check_writable(out / IMAGES_JSON, force)
    names = _overlay_names(paths)
    overlays = [check_writable(out / OVERLAY_DIR / n, force) for n in names]

    predictor = load_predictor(artifact, backend=backend, **backend_options)
    results: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    from tqdm import tqdm

    with predictor, tqdm(total=len(paths), unit="img", disable=not show_progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            images = [read_image(paths[i]) for i in chunk]
            for i, image, dets in zip(chunk, images, predictor.predict(images)):
                dets = filter_by_score(dets, score_threshold)
                image_id = i + 1
                results.extend(to_coco_results(image_id, dets))
                records.append(
                    {
                        "id": image_id,
                        "file_name": str(paths[i]),
                        "height": int(image.shape[0]),
                        "width": int(image.shape[1]),
                    }
                )
                _write_png(overlays[i], draw_detections(image, dets, predictor.spec))
            bar.update(len(chunk))
    atomic_write_text(img_json, json.dumps(records, indent=1) + "\n")
    atomic_write_text(det_json, json.dumps(results) + "\n")
    return InferResult(det_json, img_json, overlays, len(results))


def _write_png(path: Path, image: Any) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
