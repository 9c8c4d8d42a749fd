"""Bilinear resizing in numpy with the arithmetic of PyTorch's CPU ``F.interpolate``.

``F.interpolate(mode="bilinear", align_corners=False)`` on float32 CPU tensors takes one of two
kernels (ATen ``upsample_bilinear2d_kernel_impl_float``):

* the *generic* kernel interpolates along W, then along H, each step ``t0 * w0 + t1 * w1``;
* the *channels-last* kernel (taken when out_h + out_w <= 128 for a one-channel input, among
  other cases) forms four products ``i00 * h0 * w0 + ...`` in one expression.

PyTorch's x86 build contracts these expressions into fused multiply-adds, so matching it bit for
bit (which mask pasting needs: a single flipped rounding can flip a pixel at the 0.5 threshold)
means evaluating the same fused expressions. :func:`fma` emulates a float32 FMA in float64
(the product of two float32 is exact in float64).

Mask pasting wants only ``> 0.5`` of the result: :func:`resize_bilinear_above` gives it pixel for
pixel while computing only the pixels near a saturated mask's outline.

Images need no such care (a ulp does not move a detection): :func:`resize_image_planes` resizes
them in plain float32 arithmetic, in bands on a few threads, straight into the padded batch.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_F32 = np.float32
# Below this many output pixels resize_bilinear_above computes them all (numpy's per-call cost).
_SMALL_WINDOW = 1 << 16


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` with a single rounding, as a hardware FMA computes it."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def linear_weights(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of align_corners=False linear resizing ``in_size -> out_size``.

    Returns ``(i0, i1, w0, w1)``, each of shape [out_size] (int64 indices, float32 weights), so
    that ``out[o] = in[i0[o]] * w0[o] + in[i1[o]] * w1[o]``. Mirrors ATen's
    ``compute_source_index_and_lambda`` in float32 (its source index is one fused multiply-add).
    """
    if in_size == out_size:
        idx = np.arange(out_size, dtype=np.int64)
        out = (idx, idx, np.ones(out_size, _F32), np.zeros(out_size, _F32))
    else:
        scale = np.full(out_size, _F32(in_size) / _F32(out_size), dtype=_F32)
        dst = np.arange(out_size, dtype=_F32) + _F32(0.5)
        src = np.maximum(fma(scale, dst, np.full(out_size, -0.5, _F32)), _F32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        w1 = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
        i1 = i0 + (i0 < in_size - 1)
        out = (i0, i1, (_F32(1) - w1).astype(_F32), w1)
    for a in out:
        a.setflags(write=False)  # cached: shared between callers
    return out


def _workers() -> ThreadPoolExecutor:
    """The threads that resize images: one per core, at most 4 (numpy releases the GIL in the
    gathers and multiplies that do the work)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="maskrt-resize")
    return _POOL


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool there."""
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def resize_image_planes(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Resize RGB uint8 ``image`` [H, W, C] to float32 planes in [0, 1], written into ``out``
    [C, out_h, out_w] (any float32 view, e.g. a slot of a padded batch); returns ``out``.

    Bilinear, align_corners=False, in plain float32: each pixel is ``value / 255`` (as
    torchvision's to_tensor), then along W and then along H as PyTorch's generic kernel, each
    step ``a * w0 + b * w1`` rounded once per operation, without its fused multiply-adds: within
    a few ulp of ``F.interpolate``. An axis whose size does not change is copied as is, which is
    what PyTorch's weights (1 and 0) give exactly.

    The work is split into independent tasks, a channel and a band of output rows each, every
    one resizing only the source rows its band reads, in place, on a few threads; the
    arithmetic of every element is the same whatever the split.
    """
    in_h, in_w, channels = image.shape
    _, out_h, out_w = out.shape
    x0, x1, ww0, ww1 = linear_weights(in_w, out_w)
    y0, y1, hw0, hw1 = linear_weights(in_h, out_h)

    def band(c: int, r0: int, r1: int) -> None:
        lo, hi = int(y0[r0]), int(y1[r1 - 1]) + 1
        rows = image[lo:hi, :, c].astype(_F32)
        rows /= _F32(255.0)
        if out_w != in_w:
            across = np.take(rows, x0, axis=1)
            across *= ww0
            right = np.take(rows, x1, axis=1)
            right *= ww1
            across += right
        else:
            across = rows
        target = out[c, r0:r1]
        if out_h != in_h:
            above = np.take(across, y0[r0:r1] - lo, axis=0)  # take(out=...) buffers: slower
            above *= hw0[r0:r1, None]
            below = np.take(across, y1[r0:r1] - lo, axis=0)
            below *= hw1[r0:r1, None]
            np.add(above, below, out=target)
        else:
            target[...] = across

    if out_h * out_w < _SMALL_WINDOW:  # threads cost more than they save on small images
        for c in range(channels):
            band(c, 0, out_h)
        return out
    pool = _workers()
    # One band per thread: smaller bands (cache-sized) measured slower, numpy's per-call cost.
    parts = min(out_h, pool._max_workers)
    edges = [out_h * i // parts for i in range(parts + 1)]
    tasks = [
        pool.submit(band, c, edges[i], edges[i + 1])
        for c in range(channels)
        for i in range(parts)
        if edges[i + 1] > edges[i]
    ]
    for task in tasks:
        task.result()
    return out


def _window_weights(
    in_h: int, in_w: int, out_h: int, out_w: int, rows: slice, cols: slice
) -> tuple[np.ndarray, ...]:
    """:func:`linear_weights` of both axes, cut to the output window ``rows`` x ``cols``."""
    y0, y1, hw0, hw1 = (a[rows] for a in linear_weights(in_h, out_h))
    x0, x1, ww0, ww1 = (a[cols] for a in linear_weights(in_w, out_w))
    return y0, y1, hw0, hw1, x0, x1, ww0, ww1


def _across(
    image: np.ndarray,
    y0: np.ndarray,
    y1: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    ww0: np.ndarray,
    ww1: np.ndarray,
) -> tuple[np.ndarray, int]:
    """The generic kernel's W pass, ``fma(a, w0, b * w1)``, of the source rows the window reads.

    An output row's W pass depends only on its source row: computed once per source row (a
    30-row mask pasted into a tall box would otherwise repeat it hundreds of times). Returns
    the rows [S, out_w(, C)] and the first source row's index.
    """
    lo, hi = int(y0[0]), int(y1[-1]) + 1
    source = image[lo:hi]
    return fma(source[:, x0], ww0, source[:, x1] * ww1), lo


def _down(top: np.ndarray, bottom: np.ndarray, hw0: np.ndarray, hw1: np.ndarray) -> np.ndarray:
    """The generic kernel's H pass, ``fma(top, hw0, bottom * hw1)``, on one float64 buffer (the
    products of two float32 are exact in float64): ``top`` itself if it is float64 (pass a
    fresh array, gathered after the cheap conversion of the fewer source rows)."""
    acc = top.astype(np.float64, copy=False)
    acc *= hw0
    acc += bottom * hw1
    return acc.astype(_F32)


def resize_bilinear(
    image: np.ndarray,
    out_h: int,
    out_w: int,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Resize ``image`` [H, W] or [H, W, C] (float32) to [out_h, out_w(, C)] with PyTorch's
    rounding for a one-channel tensor (which kernel, which fused expressions).

    ``rows``/``cols`` select a non-empty window of the output (computed without the rest).
    """
    in_h, in_w = image.shape[:2]
    y0, y1, hw0, hw1, x0, x1, ww0, ww1 = _window_weights(in_h, in_w, out_h, out_w, rows, cols)
    extra = (1,) * (image.ndim - 2)
    hw0 = hw0.reshape((-1, 1) + extra)
    hw1 = hw1.reshape((-1, 1) + extra)
    ww0 = ww0.reshape((-1,) + extra)
    ww1 = ww1.reshape((-1,) + extra)
    if out_h + out_w <= 128:
        # channels-last kernel: fma(d, w11, fma(c, w10, fma(a, w00, b * w01)))
        r0, r1 = image[y0], image[y1]
        w00, w01, w10, w11 = hw0 * ww0, hw0 * ww1, hw1 * ww0, hw1 * ww1
        acc = fma(r0[:, x0], w00, r0[:, x1] * w01)
        acc = fma(r1[:, x0], w10, acc)
        return fma(r1[:, x1], w11, acc)
    across, lo = _across(image, y0, y1, x0, x1, ww0, ww1)
    return _down(across.astype(np.float64)[y0 - lo], across[y1 - lo], hw0, hw1)


def resize_bilinear_above(
    image: np.ndarray,
    out_h: int,
    out_w: int,
    threshold: float,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """``resize_bilinear(image, ...) > threshold`` for one-channel ``image`` [H, W] (bool
    [rows, cols]), the same pixel for pixel; a large window of a smooth image (a pasted mask)
    without computing most of its pixels (see :func:`_above_by_source_rows`)."""
    if out_h + out_w <= 128:  # small: the channels-last kernel, computed whole
        return resize_bilinear(image, out_h, out_w, rows, cols) > threshold
    in_h, in_w = image.shape
    y0, y1, hw0, hw1, x0, x1, ww0, ww1 = _window_weights(in_h, in_w, out_h, out_w, rows, cols)
    across, lo = _across(image, y0, y1, x0, x1, ww0, ww1)
    k0, k1 = y0 - lo, y1 - lo  # each output row's two rows of `across`; k0 is non-decreasing
    if len(k0) * len(x0) >= _SMALL_WINDOW:  # else sorting pixels out costs more than computing
        largest = max(abs(threshold), float(image.max()), -float(image.min()))
        out = _above_by_source_rows(across, k0, k1, hw0, hw1, threshold, largest)
        if out is not None:
            return out
    hw0, hw1 = hw0[:, None], hw1[:, None]
    return _down(across.astype(np.float64)[k0], across[k1], hw0, hw1) > threshold


def _above_by_source_rows(
    across: np.ndarray,
    k0: np.ndarray,
    k1: np.ndarray,
    hw0: np.ndarray,
    hw1: np.ndarray,
    threshold: float,
    largest: float,
) -> np.ndarray | None:
    """The generic kernel's H pass ``> threshold`` (bool [len(k0), W]) from its source rows
    ``across`` [S, W] (values at most ``largest`` in magnitude), or None if a quarter or more
    of the pixels would need computing.

    An output pixel lies between its two source rows' values (weights >= 0 summing to 1, up to
    rounding): where both lie clearly on one side of ``threshold`` (a pasted mask is saturated
    away from its outline) the answer needs no arithmetic, and every output row between the
    same two source rows shares it. Only the other pixels are computed, exactly.
    """
    # Rounding moves a pixel by a few ulp of the largest value: far less than this margin.
    margin = 8 * float(np.finfo(_F32).eps) * max(1.0, largest)
    above, below = across > threshold + margin, across < threshold - margin
    partner = np.arange(len(across))
    partner[k0] = k1
    decided_above = above & above[partner]
    undecided = ~(decided_above | (below & below[partner]))
    # Output rows first[k] ... first[k] + count[k] - 1 lie between source rows k and partner[k].
    ks = np.arange(len(across))
    first = np.searchsorted(k0, ks, "left")
    count = np.searchsorted(k0, ks, "right") - first
    pair, col = np.nonzero(undecided)
    n = count[pair]
    total = int(n.sum())
    if total >= len(k0) * across.shape[1] // 4:  # index arithmetic would cost more than all
        return None
    out = decided_above[k0]
    if total:
        ry = np.repeat(first[pair] - (np.cumsum(n) - n), n) + np.arange(total)
        rx = np.repeat(col, n)
        exact = _down(across[k0[ry], rx], across[k1[ry], rx], hw0[ry], hw1[ry])
        out[ry, rx] = exact > threshold
    return out
