"""NumPy (CPU) and torch-CUDA entry points of the native RoIAlign implementations.

The CPU functions call ``libmaskrt_roialign_cpu`` and the CUDA ones ``libmaskrt_roialign_cuda``
(the same kernel the TensorRT plugin enqueues) through ctypes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError
from maskrt.plugins import _library
from maskrt.plugins.contract import MultiLevelRoIAlignFields, SingleRoIAlignFields

_DTYPE_CODE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _ptr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


def _ints(values: Sequence[int]) -> ctypes.Array[ctypes.c_int]:
    return (ctypes.c_int * len(values))(*values)


def _floats(values: Sequence[float]) -> ctypes.Array[ctypes.c_float]:
    return (ctypes.c_float * len(values))(*values)


def _check_features(shapes: list[tuple[int, ...]], dtypes: list[Any], fields: Any) -> None:
    if len(shapes) != len(fields.spatial_scales):
        raise MaskrtError(
            f"{len(shapes)} feature maps for {len(fields.spatial_scales)} spatial scales"
        )
    if any(len(s) != 4 for s in shapes):
        raise MaskrtError("feature maps must be [B, C, H, W]")
    if len({s[:2] for s in shapes}) != 1:
        raise MaskrtError(f"feature maps disagree on batch or channels: {shapes}")
    if len(set(dtypes)) != 1:
        raise MaskrtError(f"feature maps have mixed dtypes: {dtypes}")


def multilevel_roi_align(
    features: Sequence[Any],
    rois: Any,
    fields: MultiLevelRoIAlignFields,
    *,
    num_threads: int = 0,
) -> np.ndarray:
    """torchvision ``MultiScaleRoIAlign`` on the CPU.

    Args:
        features: one ``[B, C, H_l, W_l]`` float32 or float16 array per level, finest first.
        rois: float32 ``[B, N, 4]`` boxes (x1, y1, x2, y2) in input-image pixels; image ``b``'s
            boxes are ``rois[b]``.
        fields: the plugin fields (output size, sampling ratio, scales, level mapping).
        num_threads: CPU threads, 0 = one per hardware thread.

    Returns:
        ``[B, N, C, P, P]`` array of the features' dtype.
    """
    feats = [np.ascontiguousarray(_as_numpy(f)) for f in features]
    boxes = np.ascontiguousarray(_as_numpy(rois), dtype=np.float32)
    _check_features([f.shape for f in feats], [f.dtype for f in feats], fields)
    dtype = feats[0].dtype
    if dtype not in _DTYPE_CODE:
        raise MaskrtError(f"features must be float32 or float16, got {dtype}")
    b, c = feats[0].shape[:2]
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise MaskrtError(f"rois must be [B={b}, N, 4], got {list(boxes.shape)}")
    n = boxes.shape[1]
    p = fields.output_size
    out = np.empty((b, n, c, p, p), dtype=dtype)
    ptrs = (ctypes.c_void_p * len(feats))(*[_ptr(f) for f in feats])
    rc = _library.load(_library.CPU).maskrt_roialign_cpu_multilevel(
        _DTYPE_CODE[dtype],
        len(feats),
        ptrs,
        _ints([f.shape[2] for f in feats]),
        _ints([f.shape[3] for f in feats]),
        b,
        c,
        _ptr(boxes),
        n,
        _ptr(out),
        p,
        fields.sampling_ratio,
        fields.aligned,
        _floats(fields.spatial_scales),
        float(fields.canonical_scale),
        fields.canonical_level,
        num_threads,
    )
    _library.check(rc, "multilevel_roi_align")
    return out


def roi_align_single(
    x: Any,
    rois: Any,
    batch_indices: Any,
    fields: SingleRoIAlignFields,
    *,
    num_threads: int = 0,
) -> np.ndarray:
    """ONNX ``RoiAlign`` (avg mode) on the CPU.

    Args:
        x: ``[B, C, H, W]`` float32 or float16 features.
        rois: float32 ``[R, 4]`` boxes (x1, y1, x2, y2) in input pixels.
        batch_indices: integer ``[R]``, the image of each box.
        fields: output size, sampling ratio, spatial scale, half-pixel (``aligned``).

    Returns:
        ``[R, C, output_height, output_width]`` array of ``x``'s dtype.
    """
    feats = np.ascontiguousarray(_as_numpy(x))
    boxes = np.ascontiguousarray(_as_numpy(rois), dtype=np.float32)
    idx = np.ascontiguousarray(_as_numpy(batch_indices), dtype=np.int64)
    if feats.dtype not in _DTYPE_CODE or feats.ndim != 4:
        raise MaskrtError(
            f"x must be float32/float16 [B, C, H, W], got {feats.dtype} {feats.shape}"
        )
    if boxes.ndim != 2 or boxes.shape[1] != 4 or idx.shape != (boxes.shape[0],):
        raise MaskrtError(
            f"rois must be [R, 4] and batch_indices [R], got {boxes.shape}, {idx.shape}"
        )
    b, c, h, w = feats.shape
    r = boxes.shape[0]
    out = np.empty((r, c, fields.output_height, fields.output_width), dtype=feats.dtype)
    rc = _library.load(_library.CPU).maskrt_roialign_cpu_single(
        _DTYPE_CODE[feats.dtype],
        _ptr(feats),
        b,
        c,
        h,
        w,
        _ptr(boxes),
        _ptr(idx),
        r,
        _ptr(out),
        fields.output_height,
        fields.output_width,
        fields.sampling_ratio,
        float(fields.spatial_scale),
        fields.aligned,
        num_threads,
    )
    _library.check(rc, "roi_align_single")
    return out


# --------------------------------------------------------------------------------------------
# CUDA (torch tensors on the GPU; the launch goes on torch's current stream)


def _cuda_lib() -> ctypes.CDLL:
    return _library.load(_library.CUDA)


def multilevel_roi_align_cuda(
    features: Sequence[Any], rois: Any, fields: MultiLevelRoIAlignFields
) -> Any:
    """:func:`multilevel_roi_align` with the CUDA kernel on torch CUDA tensors.

    ``features``: float32/float16 ``[B, C, H_l, W_l]`` CUDA tensors; ``rois``: float32
    ``[B, N, 4]`` CUDA tensor. Returns a ``[B, N, C, P, P]`` CUDA tensor (asynchronous, on
    ``torch.cuda.current_stream()``).
    """
    import torch

    feats = [f.contiguous() for f in features]
    boxes = rois.to(torch.float32).contiguous()
    _check_features([tuple(f.shape) for f in feats], [f.dtype for f in feats], fields)
    if feats[0].dtype not in (torch.float32, torch.float16) or not feats[0].is_cuda:
        raise MaskrtError("features must be float32/float16 CUDA tensors")
    b, c = feats[0].shape[:2]
    n = boxes.shape[1]
    p = fields.output_size
    out = torch.empty((b, n, c, p, p), dtype=feats[0].dtype, device=feats[0].device)
    ptrs = (ctypes.c_void_p * len(feats))(*[f.data_ptr() for f in feats])
    rc = _cuda_lib().maskrt_roialign_cuda_multilevel(
        0 if feats[0].dtype == torch.float32 else 1,
        len(feats),
        ptrs,
        _ints([f.shape[2] for f in feats]),
        _ints([f.shape[3] for f in feats]),
        b,
        c,
        boxes.data_ptr(),
        n,
        out.data_ptr(),
        p,
        fields.sampling_ratio,
        fields.aligned,
        _floats(fields.spatial_scales),
        float(fields.canonical_scale),
        fields.canonical_level,
        torch.cuda.current_stream(feats[0].device).cuda_stream,
    )
    _library.check(rc, "multilevel_roi_align_cuda")
    return out


def roi_align_single_cuda(
    x: Any, rois: Any, batch_indices: Any, fields: SingleRoIAlignFields
) -> Any:
    """:func:`roi_align_single` with the CUDA kernel on torch CUDA tensors (int32/int64
    ``batch_indices``; out-of-range indices give zeros)."""
    import torch

    feats = x.contiguous()
    boxes = rois.to(torch.float32).contiguous()
    idx = batch_indices.contiguous()
    b, c, h, w = feats.shape
    r = boxes.shape[0]
    out = torch.empty(
        (r, c, fields.output_height, fields.output_width), dtype=feats.dtype, device=feats.device
    )
    rc = _cuda_lib().maskrt_roialign_cuda_single(
        0 if feats.dtype == torch.float32 else 1,
        feats.data_ptr(),
        b,
        c,
        h,
        w,
        boxes.data_ptr(),
        idx.data_ptr(),
        1 if idx.dtype == torch.int64 else 0,
        r,
        out.data_ptr(),
        fields.output_height,
        fields.output_width,
        fields.sampling_ratio,
        float(fields.spatial_scale),
        fields.aligned,
        torch.cuda.current_stream(feats.device).cuda_stream,
    )
    _library.check(rc, "roi_align_single_cuda")
    return out
