"""A synthetic COCO-format dataset of circles, squares and triangles.

Every image is generated from ``(seed, split, index)`` alone, so a dataset is reproducible
byte for byte. Shapes have random colours, sizes and rotations, overlap and occlude one another,
and sit on random backgrounds (flat, gradient or noisy); images have varying, non-square sizes so
that the detector's resizing is exercised. Instance masks are the *visible* parts after occlusion,
stored as compressed RLE, with bbox and area derived from them.

Layout of a dataset root::

    ROOT/train/000000.png ...            ROOT/annotations/instances_train.json
    ROOT/val/000000.png ...              ROOT/annotations/instances_val.json
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from maskrt.coco import dataset_layout
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, atomic_write_text
from maskrt.specs import SHAPES_CATEGORIES

SPLITS = ("train", "val")
MIN_SIDE, MAX_SIDE = 96, 200  # image side lengths in pixels
MAX_SHAPES = 5
MIN_VISIBLE_AREA = 80  # pixels: fully occluded slivers are not instances
MAX_OCCLUSION = 0.35  # later shapes together may hide at most this fraction of a shape
MIN_INSIDE = 0.75  # at least this fraction of a shape lies inside the image
MIN_CONTRAST = 120  # L1 distance (0..765) of a shape's colour to every colour it covers
_SPLIT_SALT = {"train": 0, "val": 1_000_003}


@dataclass(frozen=True)
class ShapeInstance:
    """One generated instance: its category (1-based) and its visible binary mask [H, W]."""

    category_id: int
    mask: np.ndarray


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:  # flat
        img: np.ndarray = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient towards a second colour
        other = rng.integers(0, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base * (1 - t[..., None]) + other * t[..., None]
    else:  # noisy
        img = base + rng.normal(0, rng.uniform(4, 24), size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygon(
    rng: np.random.Generator, category: str, cx: float, cy: float, size: float
) -> list[tuple[float, float]]:
    angle = rng.uniform(0, 2 * math.pi)
    corners = 4 if category == "square" else 3
    radius = size / math.sqrt(2) if category == "square" else size / math.sqrt(3)
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / corners),
            cy + radius * math.sin(angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _ideal_area(category: str, size: float) -> float:
    """Area in pixels of the whole shape (also the parts outside the image)."""
    if category == "circle":
        return math.pi * size * size / 4
    if category == "square":
        return size * size
    return math.sqrt(3) / 4 * size * size  # equilateral triangle of side ``size``


def _draw_shape(
    rng: np.random.Generator, category: str, height: int, width: int
) -> tuple[np.ndarray, float]:
    """Binary mask [H, W] of one randomly placed, sized and rotated shape, and its whole area."""
    size = rng.uniform(0.22, 0.55) * min(height, width)
    # The centre may sit near the border so some shapes are cut by the image edge.
    cx = rng.uniform(0.1, 0.9) * width
    cy = rng.uniform(0.1, 0.9) * height
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if category == "circle":
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(_shape_polygon(rng, category, cx, cy, size), fill=1)
    return np.asarray(canvas, dtype=bool), _ideal_area(category, size)


def _place_shape(
    rng: np.random.Generator,
    category: str,
    height: int,
    width: int,
    others: list[np.ndarray],
    other_areas: list[float],
) -> tuple[np.ndarray, float] | None:
    """A shape mostly inside the image that leaves every earlier shape at least
    1 - MAX_OCCLUSION of its whole area visible (a few tries), or None.

    Cuts and occlusion stay partial so that every instance remains recognisable as its category.
    """
    for _ in range(8):
        mask, ideal = _draw_shape(rng, category, height, width)
        if int(mask.sum()) < MIN_INSIDE * ideal:
            continue
        if all(
            int((o & ~mask).sum()) >= (1 - MAX_OCCLUSION) * a for o, a in zip(others, other_areas)
        ):
            return mask, ideal
    return None


def _contrasting_colour(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, covered: list[np.ndarray]
) -> np.ndarray:
    """A random colour at least MIN_CONTRAST away from the background and from every earlier
    shape under ``mask`` (the best of a few draws)."""
    under = [image[mask & ~np.any(covered, axis=0)] if covered else image[mask]]
    under += [image[mask & c] for c in covered]
    refs = [u.reshape(-1, 3).mean(axis=0) for u in under if len(u)]
    best, best_gap = None, -1.0
    for _ in range(16):
        colour = rng.integers(0, 256, size=3)
        gap = min((float(np.abs(r - colour).sum()) for r in refs), default=765.0)
        if gap > best_gap:
            best, best_gap = colour, gap
        if gap >= MIN_CONTRAST:
            break
    assert best is not None
    return best


def generate_image(seed: int, split: str, index: int) -> tuple[np.ndarray, list[ShapeInstance]]:
    """One RGB uint8 image [H, W, 3] and its visible instances, determined by the arguments."""
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], index])
    height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = _background(rng, height, width)
    masks: list[np.ndarray] = []
    areas: list[float] = []
    categories: list[int] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        category_id = int(rng.integers(1, len(SHAPES_CATEGORIES) + 1))
        placed = _place_shape(rng, SHAPES_CATEGORIES[category_id - 1], height, width, masks, areas)
        if placed is None:
            continue
        mask, area = placed
        image[mask] = _contrasting_colour(rng, image, mask, [m & mask for m in masks])
        for earlier in masks:  # later shapes occlude earlier ones
            earlier &= ~mask
        masks.append(mask)
        areas.append(area)
        categories.append(category_id)
    instances = [
        ShapeInstance(c, m) for c, m in zip(categories, masks) if int(m.sum()) >= MIN_VISIBLE_AREA
    ]
    return image, instances


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _annotation(ann_id: int, image_id: int, inst: ShapeInstance) -> dict[str, Any]:
    ys, xs = np.nonzero(inst.mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": inst.category_id,
        "segmentation": _rle(inst.mask),
        "area": float(inst.mask.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "iscrowd": 0,
    }


def categories() -> list[dict[str, Any]]:
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPES_CATEGORIES)
    ]


def write_split(
    root: Path,
    split: str,
    count: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``count`` images of ``split`` and their COCO annotation file; return the json path."""
    image_dir, ann_path = dataset_layout(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        image, instances = generate_image(seed, split, index)
        file_name = f"{index:06d}.png"
        with atomic_path(image_dir / file_name) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for inst in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, inst))
        if progress:
            progress(1)
    coco = {
        "info": {"description": f"maskrt synthetic shapes ({split}, seed {seed})", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ann_path, json.dumps(coco))
    return ann_path


def make_shapes_dataset(
    root: str | os.PathLike[str],
    train: int = 1000,
    val: int = 200,
    seed: int = 0,
    force: bool = False,
    show_progress: bool = False,
) -> Path:
    """Write a synthetic shapes dataset under ``root`` (both splits) and return ``root``."""
    from tqdm import tqdm

    if train < 0 or val < 0 or train + val == 0:
        raise MaskrtError(f"need a positive number of images (train={train}, val={val})")
    out = Path(root)
    if out.exists() and any(out.iterdir()) and not force:
        raise MaskrtError(f"{out} is not empty; pass --force to write the dataset there anyway")
    with tqdm(total=train + val, desc="shapes", unit="img", disable=not show_progress) as bar:
        for split, count in (("train", train), ("val", val)):
            if count:
                write_split(out, split, count, seed, progress=bar.update)
    return out
