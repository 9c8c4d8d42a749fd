"""Draw detections on an image: translucent masks, boxes, label names and scores, keypoints."""

from __future__ import annotations

import colorsys

import numpy as np

from maskrt.detections import Detections
from maskrt.specs import ModelSpec

MASK_ALPHA = 0.5


def label_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _mask_window(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns that hold a bool mask [H, W]'s pixels, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _blend_masks(image: np.ndarray, dets: Detections) -> np.ndarray:
    """RGB uint8 [H, W, 3] with each mask blended in its label's colour (float32, rounded once).

    Only the window around all masks is converted and blended, and each mask only over its own
    window: a video frame's masks cover a small part of it, and pixels outside every mask come
    out as they went in, as a whole-image blend leaves them.
    """
    out = np.array(image, np.uint8, copy=True)
    if dets.masks is None or len(dets) == 0:
        return out
    windows = [_mask_window(dets.masks[i]) for i in range(len(dets))]
    present = [w for w in windows if w is not None]
    if not present:
        return out
    top, bottom = min(w[0].start for w in present), max(w[0].stop for w in present)
    left, right = min(w[1].start for w in present), max(w[1].stop for w in present)
    canvas = image[top:bottom, left:right].astype(np.float32)
    # Lowest score first, so the most confident mask ends on top.
    for i in reversed(range(len(dets))):
        window = windows[i]
        if window is None:
            continue
        rows = slice(window[0].start - top, window[0].stop - top)
        cols = slice(window[1].start - left, window[1].stop - left)
        tint = np.asarray(label_color(int(dets.labels[i])), np.float32)
        m = dets.masks[i][window]
        region = canvas[rows, cols]
        region[m] = region[m] * (1 - MASK_ALPHA) + tint * MASK_ALPHA
    out[top:bottom, left:right] = canvas.round().clip(0, 255).astype(np.uint8)
    return out


def draw_detections(image: np.ndarray, dets: Detections, spec: ModelSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] with ``dets`` drawn on it (a new array)."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(_blend_masks(image, dets))
    draw = ImageDraw.Draw(pil)
    for i in range(len(dets)):
        label = int(dets.labels[i])
        color = label_color(label)
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{spec.class_name(label)} {float(dets.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0))
        if dets.keypoints is not None:
            for x, y, _ in dets.keypoints[i]:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    return np.asarray(pil)
