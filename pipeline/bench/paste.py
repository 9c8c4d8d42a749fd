"""The mask-pasting micro-benchmark: maskrt's numpy paste vs torchvision's, identical inputs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError
from maskrt.machine import machine_facts

from .harness import ms, stats

PASTE_CASES = ("random", "saturated")


def paste_inputs(
    kind: str, num: int, image_size: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mask probabilities [num, 28, 28] and boxes [num, 4] for timing mask pasting.

    ``random``: uniform noise in boxes of up to 40 % of the image (every pixel a coin toss:
    the most arithmetic). ``saturated``: a blob near 1 in a field near 0, as a trained head
    predicts, in boxes of 40-100 % of the image (large objects).
    """
    rng = np.random.default_rng(seed)
    h, w = image_size
    if kind == "random":
        masks = rng.random((num, 28, 28), dtype=np.float32)
        xy = rng.uniform([0, 0], [w * 0.9, h * 0.9], size=(num, 2))
        wh = rng.uniform(8, [w * 0.4, h * 0.4], size=(num, 2))
    elif kind == "saturated":
        yy, xx = np.mgrid[:28, :28]
        cy, cx = rng.uniform(7, 21, (2, num, 1, 1))
        radius = rng.uniform(4, 11, (num, 1, 1))
        logits = 4 * (radius - np.hypot(yy - cy, xx - cx))
        masks = (1 / (1 + np.exp(-logits))).astype(np.float32)
        wh = rng.uniform([w * 0.4, h * 0.4], [w, h], size=(num, 2))
        xy = rng.uniform(0, 1, size=(num, 2)) * ([w, h] - wh)
    else:
        raise MaskrtError(f"unknown paste case {kind!r}; choose from {PASTE_CASES}")
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return masks, boxes


def bench_paste_masks(
    num: int = 100,
    image_size: tuple[int, int] = (800, 1344),
    reps: int = 20,
    seed: int = 0,
    kind: str = "random",
) -> dict[str, Any]:
    """maskrt's numpy mask pasting vs torchvision's paste_masks_in_image, identical inputs
    (``kind``: see :func:`paste_inputs`)."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.runtime.postprocess import paste_masks

    masks, boxes = paste_inputs(kind, num, image_size, seed)
    masks_t, boxes_t = torch.from_numpy(masks[:, None]), torch.from_numpy(boxes)

    ours_ms, ref_ms = [], []
    ours = ref = None
    for rep in range(reps):
        for which in (0, 1) if rep % 2 == 0 else (1, 0):
            t = time.perf_counter()
            if which == 0:
                ours = paste_masks(masks, boxes, image_size)
                ours_ms.append(ms(t))
            else:
                ref = (paste_masks_in_image(masks_t, boxes_t, image_size) > 0.5)[:, 0].numpy()
                ref_ms.append(ms(t))
    assert ours is not None and ref is not None
    return {
        "masks": kind,
        "detections": num,
        "image_size": list(image_size),
        "identical": bool(np.array_equal(ours, ref)),
        "maskrt numpy": stats(ours_ms),
        "torchvision": stats(ref_ms),
        "speedup": statistics.median(ref_ms) / statistics.median(ours_ms),
        "machine": machine_facts(),
    }


def paste_line(result: dict[str, Any]) -> str:
    """One :func:`bench_paste_masks` result as the line `maskrt bench` prints."""
    p = result
    return (
        f"\nMask pasting, {p['detections']} {p['masks']} masks on "
        f"{p['image_size'][0]}x{p['image_size'][1]}: "
        f"**{p['speedup']:.2f}x** (numpy {p['maskrt numpy']['median']:.1f} ms vs "
        f"torchvision {p['torchvision']['median']:.1f} ms median), "
        f"identical masks: {p['identical']}"
    )


def bench_paste_cases(log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`bench_paste_masks` on every case of :data:`PASTE_CASES`, each line logged."""
    results = []
    for kind in PASTE_CASES:
        results.append(bench_paste_masks(kind=kind))
        log(paste_line(results[-1]))
    return results
