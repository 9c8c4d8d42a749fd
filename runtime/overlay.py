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


def draw_detections(image: np.ndarray, dets: Detections, spec: ModelSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] with ``dets`` drawn on it (a new array)."""
    from PIL import Image, ImageDraw

    canvas = image.astype(np.float32)
    if dets.masks is not None:
        # Lowest score first, so the most confident mask ends on top.
        for i in reversed(range(len(dets))):
            tint = np.asarray(label_color(int(dets.labels[i])), np.float32)
            m = dets.masks[i]
            canvas[m] = canvas[m] * (1 - MASK_ALPHA) + tint * MASK_ALPHA
    pil = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
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
