"""Deploy-graph outputs -> :class:`~maskrt.detections.Detections` in original-image pixels.

Reproduces torchvision's ``GeneralizedRCNNTransform.postprocess``: boxes and keypoints are
rescaled with float32 ratios (``resize_boxes`` / ``resize_keypoints``) and the 28x28 mask
probabilities are pasted with ``paste_masks_in_image`` (pad by one pixel, expand the box by
the same ratio, truncate to integers, bilinear-resize to the box, clip to the image), then
thresholded at 0.5. Only the visible part of each box is written, and only pixels whose side
of 0.5 their source rows leave open are interpolated.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping

import numpy as np

from maskrt import contract
from maskrt.detections import Detections

from .interpolate import resize_bilinear_above
from .keypoints import heatmaps_to_keypoints
from .preprocess import Batch

_F32 = np.float32
MASK_THRESHOLD = 0.5


def _ratios(new_size: tuple[int, int], original_size: tuple[int, int]) -> tuple[_F32, _F32]:
    # torchvision divides float32 tensors: the ratio itself is rounded to float32.
    rh = _F32(new_size[0]) / _F32(original_size[0])
    rw = _F32(new_size[1]) / _F32(original_size[1])
    return _F32(rh), _F32(rw)


def resize_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], new_size: tuple[int, int]
) -> np.ndarray:
    """Boxes float32 [N, 4] (x1, y1, x2, y2) from ``original_size`` to ``new_size`` (h, w)."""
    rh, rw = _ratios(new_size, original_size)
    out = boxes.astype(np.float32, copy=True)
    out[:, 0::2] *= rw
    out[:, 1::2] *= rh
    return out


def resize_keypoints(
    keypoints: np.ndarray, original_size: tuple[int, int], new_size: tuple[int, int]
) -> np.ndarray:
    """Keypoints float32 [N, K, 3] (x, y, score): x and y from ``original_size`` to ``new_size``."""
    rh, rw = _ratios(new_size, original_size)
    out = keypoints.astype(np.float32, copy=True)
    out[..., 0] *= rw
    out[..., 1] *= rh
    return out


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Scale float32 boxes [N, 4] about their centres (torchvision's ``expand_boxes``)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * _F32(0.5)
    h_half = (boxes[:, 3] - boxes[:, 1]) * _F32(0.5)
    x_c = (boxes[:, 2] + boxes[:, 0]) * _F32(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * _F32(0.5)
    w_half = w_half * _F32(scale)
    h_half = h_half * _F32(scale)
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


# numpy asks the kernel for transparent huge pages on every array of 4 MiB or more.
_HUGE_PAGE_ARRAY_BYTES = 1 << 22


def sparse_zeros(shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """A zero array of which only a small part will be written (masks pasted into small boxes).

    A large one gets its own anonymous mapping with huge pages off, so that each first write
    zeroes one 4 KiB page instead of the 2 MiB around it: faster and steadier pasting, most of all
    where fresh memory is slow to fault in (a VM); BENCHMARKS.md, "Mask pasting into
    huge-page-free memory", has the figures. Mostly written arrays are better off with huge
    pages.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes < _HUGE_PAGE_ARRAY_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):  # not Linux
        return np.zeros(shape, dtype)
    try:
        # private (a forked child writes its own copy), anonymous (zero-filled), freed with the
        # last array that views it
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return np.zeros(shape, dtype)  # no mapping to be had: numpy's error says it plainly
    try:
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    except OSError:
        pass  # a kernel without transparent huge pages: 4 KiB pages anyway
    return np.frombuffer(buffer, dtype).reshape(shape)


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], padding: int = 1
) -> np.ndarray:
    """Paste mask probabilities [N, M, M] into boxes [N, 4] of an image (h, w).

    Returns bool [N, h, w]: the pasted probability > 0.5, pixel for pixel what
    ``paste_masks_in_image(...) > 0.5`` gives on PyTorch's CPU kernels.
    """
    im_h, im_w = image_size
    n = masks.shape[0]
    if n == 0:
        return np.zeros((0, im_h, im_w), bool)
    m = masks.shape[-1]
    padded = np.pad(masks.astype(np.float32), ((0, 0), (padding, padding), (padding, padding)))
    scale = float(m + 2 * padding) / m
    # float -> int64 truncates toward zero, as torch's .to(torch.int64) does
    ibox = expand_boxes(boxes.astype(np.float32), scale).astype(np.int64)
    # Each mask writes the image rows its box spans: when they are most of the array, huge
    # pages serve the writes better than 4 KiB ones.
    spans = np.clip(ibox[:, 3] + 1, 0, im_h) - np.clip(ibox[:, 1], 0, im_h)
    zeros = np.zeros if np.maximum(spans, 0).sum() > n * im_h // 2 else sparse_zeros
    out = zeros((n, im_h, im_w), bool)
    for i in range(n):
        bx0, by0, bx1, by1 = (int(v) for v in ibox[i])
        w = max(bx1 - bx0 + 1, 1)
        h = max(by1 - by0 + 1, 1)
        x0, x1 = max(bx0, 0), min(bx1 + 1, im_w)
        y0, y1 = max(by0, 0), min(by1 + 1, im_h)
        if x1 <= x0 or y1 <= y0:
            continue  # box entirely outside the image
        # Like torchvision's slicing, a degenerate box pastes only what its resized mask covers.
        rows = slice(y0 - by0, min(y1 - by0, h))
        cols = slice(x0 - bx0, min(x1 - bx0, w))
        window = resize_bilinear_above(padded[i], h, w, MASK_THRESHOLD, rows, cols)
        out[i, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def postprocess(
    outputs: Mapping[str, np.ndarray], batch: Batch, score_threshold: float = 0.0
) -> list[Detections]:
    """Graph outputs (names from :mod:`maskrt.contract`) of one batch -> one Detections each.

    ``score_threshold`` drops rows scoring below it (the graph already applied the spec's
    ``box_score_thresh``).
    """
    num = np.asarray(outputs[contract.OUTPUT_NUM_DETECTIONS]).reshape(-1)
    results = []
    for i, original in enumerate(batch.original_sizes):
        resized = (int(batch.image_sizes[i, 0]), int(batch.image_sizes[i, 1]))
        scores = np.asarray(outputs[contract.OUTPUT_SCORES][i], np.float32)
        n = int(min(num[i], scores.shape[0]))
        keep = np.flatnonzero(scores[:n] >= score_threshold)
        boxes = resize_boxes(outputs[contract.OUTPUT_BOXES][i][keep], resized, original)
        masks = None
        if contract.OUTPUT_MASKS in outputs:
            masks = paste_masks(outputs[contract.OUTPUT_MASKS][i][keep], boxes, original)
        keypoints = None
        if contract.OUTPUT_KEYPOINT_LOGITS in outputs:
            # Decoded in resized pixels against the resized boxes, then rescaled like boxes.
            resized_boxes = np.asarray(outputs[contract.OUTPUT_BOXES][i][keep], np.float32)
            logits = np.asarray(outputs[contract.OUTPUT_KEYPOINT_LOGITS][i][keep], np.float32)
            decoded, _ = heatmaps_to_keypoints(logits, resized_boxes)
            keypoints = resize_keypoints(decoded, resized, original)
        results.append(
            Detections(
                boxes=boxes,
                scores=scores[keep].copy(),
                labels=np.asarray(outputs[contract.OUTPUT_LABELS][i][keep], np.int64),
                masks=masks,
                keypoints=keypoints,
            )
        )
    return results
