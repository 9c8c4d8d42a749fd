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

Images need no such care (a ulp does not move a detection): :func:`resize_planes` resizes them
in plain float32 arithmetic, which is several times faster.
"""

from __future__ import annotations

import functools

import numpy as np

_F32 = np.float32


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


def resize_planes(planes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize float32 ``planes`` [C, H, W] to [C, out_h, out_w] (bilinear, align_corners=False).

    Plain float32 arithmetic, along W and then along H as PyTorch's generic kernel does, without
    its fused multiply-adds: within a few ulp of ``F.interpolate``, fast for images (each pass
    gathers along a contiguous axis). An axis whose size does not change is copied as is, which
    is what PyTorch's weights (1 and 0) give exactly.
    """
    in_h, in_w = planes.shape[1:]
    if out_w != in_w:
        x0, x1, ww0, ww1 = linear_weights(in_w, out_w)
        planes = planes[:, :, x0] * ww0 + planes[:, :, x1] * ww1
    if out_h != in_h:
        y0, y1, hw0, hw1 = linear_weights(in_h, out_h)
        planes = planes[:, y0] * hw0[:, None] + planes[:, y1] * hw1[:, None]
    return planes


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
    y0, y1, hw0, hw1 = (a[rows] for a in linear_weights(in_h, out_h))
    x0, x1, ww0, ww1 = (a[cols] for a in linear_weights(in_w, out_w))
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
    # generic kernel: W first (fma(a, w0, b * w1)), then H the same way. An output row's W pass
    # depends only on its source row: compute it once per source row (a 30-row mask pasted into
    # a tall box would otherwise repeat it hundreds of times), then gather.
    lo, hi = int(y0[0]), int(y1[-1]) + 1
    source = image[lo:hi]
    across = fma(source[:, x0], ww0, source[:, x1] * ww1)
    # fma(a, w0, b * w1) for the rows, in place on one float64 buffer (the images are large)
    acc = across.astype(np.float64)[y0 - lo]
    acc *= hw0
    acc += across[y1 - lo] * hw1
    return acc.astype(_F32)
