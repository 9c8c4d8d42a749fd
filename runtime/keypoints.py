"""Keypoint heatmap logits -> keypoints, as torchvision's ``heatmaps_to_keypoints`` decodes them.

The deploy graph returns the raw [K, 56, 56] heatmap logits of each detection (the decode resizes
each heatmap to its box's integer size, which a fixed-shape graph cannot express). Per box:
bicubic-resize (A = -0.75, align_corners=False) to ceil(box size), take the argmax, and map the
pixel centre back into the box.

The bicubic resize reproduces PyTorch's CPU kernel bit for bit (float32, with the fused
multiply-adds its x86 build contracts, as :mod:`.interpolate` does for bilinear), so positions
and scores equal torchvision's.
"""

from __future__ import annotations

import functools

import numpy as np

from .interpolate import fma

_F32 = np.float32
CUBIC_A = _F32(-0.75)


def _full(x: np.ndarray, value: np.float32) -> np.ndarray:
    return np.full(x.shape, value, _F32)


def _cubic1(x: np.ndarray) -> np.ndarray:
    """((A + 2) * x - (A + 3)) * x * x + 1 for |x| <= 1, rounded as PyTorch's build does."""
    p = fma(_full(x, CUBIC_A + _F32(2)), x, _full(x, -(CUBIC_A + _F32(3))))
    return (p * x * x + _F32(1)).astype(_F32)


def _cubic2(x: np.ndarray) -> np.ndarray:
    """((A * x - 5A) * x + 8A) * x - 4A for 1 <= |x| <= 2, rounded as PyTorch's build does."""
    p = fma(_full(x, CUBIC_A), x, _full(x, -(_F32(5) * CUBIC_A)))
    p = fma(p, x, _full(x, _F32(8) * CUBIC_A))
    return (p * x - _F32(4) * CUBIC_A).astype(_F32)


def _sum4(taps: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """t0 * w0 + t1 * w1 + t2 * w2 + t3 * w3 with PyTorch's fused rounding."""
    out = fma(taps[0], weights[0], taps[1] * weights[1])
    out = fma(taps[2], weights[2], out)
    return fma(taps[3], weights[3], out)


@functools.lru_cache(maxsize=1024)
def cubic_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64 [4, out], weights float32 [4, out]) of bicubic resizing in -> out."""
    scale = np.full(out_size, _F32(in_size) / _F32(out_size), _F32)
    dst = np.arange(out_size, dtype=_F32) + _F32(0.5)
    src = fma(scale, dst, np.full(out_size, -0.5, _F32))  # not clamped at 0: cubic
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    u = (_F32(1) - t).astype(_F32)
    weights = np.stack(
        [
            _cubic2((t + _F32(1)).astype(_F32)),
            _cubic1(t),
            _cubic1(u),
            _cubic2((u + _F32(1)).astype(_F32)),
        ]
    )
    index = np.clip(i0[None, :] + np.arange(-1, 3)[:, None], 0, in_size - 1)
    index.setflags(write=False)
    weights = weights.astype(_F32)
    weights.setflags(write=False)
    return index, weights


def resize_bicubic(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float32 [C, H, W] -> [C, out_h, out_w], W first then H (PyTorch's loop order)."""
    xi, xw = cubic_weights(maps.shape[2], out_w)
    yi, yw = cubic_weights(maps.shape[1], out_h)
    cols = _sum4([maps[:, :, xi[j]] for j in range(4)], list(xw))
    return _sum4([cols[:, yi[j], :] for j in range(4)], [w[:, None] for w in yw])


def heatmaps_to_keypoints(maps: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap logits [N, K, H, W] and boxes [N, 4] -> keypoints [N, K, 3] and scores [N, K].

    Keypoints are (x, y, 1), torchvision's layout; scores are the resized logits at the argmax.
    """
    n, k = maps.shape[:2]
    keypoints = np.zeros((n, k, 3), _F32)
    scores = np.zeros((n, k), _F32)
    boxes = boxes.astype(_F32)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], _F32(1))
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], _F32(1))
    for i in range(n):
        map_w, map_h = int(np.ceil(widths[i])), int(np.ceil(heights[i]))
        roi_map = resize_bicubic(maps[i].astype(_F32), map_h, map_w)
        pos = roi_map.reshape(k, -1).argmax(axis=1)  # first maximum, as torch.argmax
        x_int, y_int = pos % map_w, pos // map_w
        x = (x_int.astype(_F32) + _F32(0.5)) * (widths[i] / _F32(map_w))
        y = (y_int.astype(_F32) + _F32(0.5)) * (heights[i] / _F32(map_h))
        keypoints[i, :, 0] = x + boxes[i, 0]
        keypoints[i, :, 1] = y + boxes[i, 1]
        keypoints[i, :, 2] = 1
        scores[i] = roi_map[np.arange(k), y_int, x_int]
    return keypoints, scores
