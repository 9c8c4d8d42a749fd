"""``maskrt infer``: run an artifact on image files and videos; write COCO-format JSON and
overlays for the images, an annotated video and JSON Lines per video (:mod:`.videoout`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskrt.coco import to_coco_results
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, atomic_write_text, check_writable

from .images import IMAGE_SUFFIXES, expand_image_paths, is_image_file, read_image
from .overlay import draw_detections
from .predictor import Predictor, filter_by_score, load_predictor
from .videoout import VideoResult

DETECTIONS_JSON = "detections.json"
IMAGES_JSON = "images.json"
OVERLAY_DIR = "overlays"


@dataclass(frozen=True)
class InferResult:
    """What ``maskrt infer`` wrote: the image outputs (None without images) and one
    :class:`~maskrt.runtime.videoout.VideoResult` per video source."""

    detections_json: Path | None
    images_json: Path | None
    overlays: list[Path]
    num_detections: int
    videos: list[VideoResult] = field(default_factory=list)


def _unique_names(stems: list[str], suffix: str) -> list[str]:
    """One file name per input, made unique when two inputs share a stem."""
    names, seen = [], set()
    for i, stem in enumerate(stems):
        name = f"{stem}{suffix}"
        if name in seen:
            name = f"{stem}_{i}{suffix}"
        seen.add(name)
        names.append(name)
    return names


def split_sources(inputs: list[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """(image files, video sources) of ``inputs``, in order: folders expand to their images; a
    file is an image when it has an image suffix or Pillow reads it, else a video (FFmpeg decides
    when it is opened); devices and URLs are videos."""
    from .video import is_stream

    images: list[Path] = []
    videos: list[str] = []
    for item in inputs:
        p = Path(item)
        if is_stream(str(item)):
            videos.append(str(item))
        elif p.is_dir():
            images.extend(expand_image_paths([p]))
        elif not p.is_file():
            what = "image " if p.suffix.lower() in IMAGE_SUFFIXES else ""
            raise MaskrtError(f"{what}{p} does not exist")
        elif p.suffix.lower() in IMAGE_SUFFIXES or is_image_file(p):
            images.append(p)
        else:
            videos.append(str(p))
    return images, videos


def run_inference(
    artifact: str | os.PathLike[str],
    inputs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    backend: str | None = None,
    batch_size: int = 1,
    score_threshold: float = 0.5,
    force: bool = False,
    show_progress: bool = False,
    stride: int = 1,
    pipeline: bool = True,
    **backend_options: Any,
) -> InferResult:
    """Detect on ``inputs`` (image files, folders of images, video files, devices, URLs) and
    write, under ``out_dir``:

    for the images, ``detections.json`` (COCO results: image_id, category_id, bbox, score, RLE
    segmentation), ``images.json`` (COCO image records: id, file_name, height, width) and one
    overlay PNG per image in ``overlays/``; for each video, ``videos/NAME.mp4`` and
    ``videos/NAME.jsonl`` (:mod:`~maskrt.runtime.videoout`), every ``stride``-th frame.
    Refuses to overwrite without ``force``. Every video is opened before anything is written;
    a damaged video raises a one-line MaskrtError after all outputs are finished.
    """
    from .video import open_video
    from .videoout import (
        JSONL_SUFFIX,
        VIDEO_DIR,
        VIDEO_SUFFIX,
        damage_error,
        infer_video,
        output_stem,
    )

    if batch_size < 1:
        raise MaskrtError(f"batch size must be at least 1, got {batch_size}")
    if stride < 1:
        raise MaskrtError(f"stride must be at least 1, got {stride}")
    paths, sources = split_sources(list(inputs))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MaskrtError(f"{out} exists and is not a folder")
    stems = _unique_names([output_stem(s) for s in sources], "")
    video_names = [(f"{s}{VIDEO_SUFFIX}", f"{s}{JSONL_SUFFIX}") for s in stems]
    for name in (n for pair in video_names for n in pair):  # before any source is opened
        if (out / VIDEO_DIR / name).exists() and not force:
            raise MaskrtError(f"{out / VIDEO_DIR / name} exists; pass --force to overwrite it")
    opened = []
    try:
        for source in sources:  # every video opens before anything is written
            opened.append(open_video(source))
        det_json = img_json = None
        overlays: list[Path] = []
        if paths:
            det_json = check_writable(out / DETECTIONS_JSON, force)
            img_json = check_writable(out / IMAGES_JSON, force)
            names = _unique_names([p.stem for p in paths], ".png")
            overlays = [check_writable(out / OVERLAY_DIR / n, force) for n in names]
        video_paths = [check_writable(out / VIDEO_DIR / v, force) for v, _ in video_names]
        jsonl_paths = [check_writable(out / VIDEO_DIR / j, force) for _, j in video_names]
        predictor = load_predictor(artifact, backend=backend, **backend_options)
    except BaseException:
        for container, _, _ in opened:
            container.close()
        raise
    videos: list[VideoResult] = []
    num_detections = 0
    with predictor:
        try:
            if paths:
                assert det_json is not None and img_json is not None
                num_detections = _infer_images(
                    predictor, paths, det_json, img_json, overlays, batch_size,
                    score_threshold, show_progress,
                )  # fmt: skip
            while opened:
                video_path, jsonl_path = video_paths[len(videos)], jsonl_paths[len(videos)]
                videos.append(
                    infer_video(
                        predictor, opened.pop(0), video_path, jsonl_path, stride=stride,
                        batch_size=batch_size, score_threshold=score_threshold,
                        pipeline=pipeline, show_progress=show_progress,
                    )
                )  # fmt: skip
        finally:
            for container, _, _ in opened:
                container.close()
    damaged = damage_error(videos)
    if damaged is not None:
        raise damaged
    return InferResult(det_json, img_json, overlays, num_detections, videos)


def _infer_images(
    predictor: Predictor,
    paths: list[Path],
    det_json: Path,
    img_json: Path,
    overlays: list[Path],
    batch_size: int,
    score_threshold: float,
    show_progress: bool,
) -> int:
    """The image part of :func:`run_inference`; returns the number of detections written."""
    results: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    from tqdm import tqdm

    with tqdm(total=len(paths), unit="img", disable=not show_progress) as bar:
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
    return len(results)


def _write_png(path: Path, image: Any) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
