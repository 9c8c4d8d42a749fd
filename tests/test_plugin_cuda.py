"""The CUDA kernel (through its C-ABI launcher) against torchvision on the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _roialign_cases import FP32_TOL, make_boxes, make_features, torchvision_multilevel
from torchvision.ops import MultiScaleRoIAlign, roi_align

from maskrt.plugins import (
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
    _library,
    multilevel_roi_align_cuda,
    roi_align_single_cuda,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.skipif(_library.find(_library.CUDA) is None, reason="CUDA library not built"),
]

# torch on the GPU divides by canonical_scale as a multiply by its reciprocal, so boxes within an
# ulp of a level boundary may legitimately differ from the CPU rule; the kinds below avoid them.
KINDS = ("normal", "degenerate", "negative", "outside", "tiny", "huge")


def _case(  # type: ignore[no-untyped-def]
    seed: int, batch: int, n: int, channels: int = 8, kinds: tuple[str, ...] = KINDS
):
    rng = np.random.default_rng(seed)
    image_hw = (256, 320)
    scales = [0.25, 0.125, 0.0625, 0.03125]
    feats = make_features(rng, batch, channels, image_hw, scales)
    rois = np.stack(
        [np.concatenate([make_boxes(rng, n, image_hw, k) for k in kinds]) for _ in range(batch)]
    )
    return feats, rois, scales, image_hw


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_matches_torchvision_cuda(sampling_ratio: int, batch: int) -> None:
    # adaptive sampling of boxes larger than their map samples a capped grid (roialign_math.h)
    kinds = KINDS if sampling_ratio > 0 else tuple(k for k in KINDS if k != "huge")
    feats, rois, scales, image_hw = _case(batch, batch, 8, kinds=kinds)
    fields = MultiLevelRoIAlignFields(7, sampling_ratio, 0, tuple(scales))
    cuda_feats = [torch.from_numpy(f).cuda() for f in feats]
    cuda_rois = torch.from_numpy(rois).cuda()
    ours = multilevel_roi_align_cuda(cuda_feats, cuda_rois, fields)
    names = [str(i) for i in range(4)]
    pooler = MultiScaleRoIAlign(names, 7, sampling_ratio)
    ref = pooler(dict(zip(names, cuda_feats)), list(cuda_rois), [image_hw] * batch)
    # against torchvision's CUDA kernel; FP32_TOL's reason (FMA contraction) holds here too.
    # Not measured: no session has had a GPU yet, nor has any for the bounds below.
    torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=FP32_TOL)


def _smooth_features(batch: int, channels: int, image_hw: tuple[int, int], scales) -> list:  # type: ignore[no-untyped-def]
    """Slowly varying maps: torchvision's fp16 kernel rounds its sample coordinates to half,
    which on white-noise features would dominate any comparison."""
    out = []
    for s in scales:
        h, w = int(image_hw[0] * s), int(image_hw[1] * s)
        y = torch.arange(h, dtype=torch.float32)[:, None] / s
        x = torch.arange(w, dtype=torch.float32)[None, :] / s
        maps = [
            torch.sin(0.01 * (c + 1) * x + 0.3 * c) * torch.cos(0.013 * y) for c in range(channels)
        ]
        out.append(torch.stack(maps)[None].expand(batch, -1, -1, -1).contiguous())
    return out


def test_fp16_matches_torchvision_cuda() -> None:
    _, rois, scales, image_hw = _case(7, 2, 8)
    feats = [f.cuda().half() for f in _smooth_features(2, 8, image_hw, scales)]
    boxes = torch.from_numpy(rois).cuda().half()  # torchvision wants rois in the features' type
    fields = MultiLevelRoIAlignFields(7, 2, 0, tuple(scales))
    ours = multilevel_roi_align_cuda(feats, boxes.float(), fields)
    assert ours.dtype == torch.float16
    names = [str(i) for i in range(4)]
    pooler = MultiScaleRoIAlign(names, 7, 2)
    ref = pooler(dict(zip(names, feats)), list(boxes), [image_hw] * 2).float()
    err = (ours.float().reshape(ref.shape) - ref).abs() / ref.abs().clamp(min=1.0)
    assert err.max().item() <= 1e-2  # FP16 torchvision rounds at each step; we round once
    # against torchvision in fp32 on the same (half-rounded) inputs: only output rounding remains
    ref32 = pooler(
        dict(zip(names, [f.float() for f in feats])), list(boxes.float()), [image_hw] * 2
    )
    # one rounding to FP16 is 2**-11 (4.9e-4) relative; 2e-3 adds room for FMA (not measured)
    torch.testing.assert_close(ours.float().reshape(ref32.shape), ref32, rtol=2e-3, atol=2e-3)


def test_aligned_and_cpu_agree_with_torchvision() -> None:
    # adaptive: no box larger than its map (capped grid); aligned adaptive: no negative box
    # (torchvision's CPU kernel raises for those, see test_plugin_cpu)
    kinds = tuple(k for k in KINDS if k not in ("huge", "negative"))
    feats, rois, scales, image_hw = _case(3, 2, 6, channels=4, kinds=kinds)
    fields = MultiLevelRoIAlignFields(14, 0, 1, tuple(scales))
    ours = (
        multilevel_roi_align_cuda(
            [torch.from_numpy(f).cuda() for f in feats], torch.from_numpy(rois).cuda(), fields
        )
        .cpu()
        .numpy()
    )
    ref = torchvision_multilevel(feats, rois, 14, 0, True, scales, image_hw)
    # nvcc fuses a*b+c into FMAs (as in torchvision's own CUDA build), the CPU code does not;
    # adaptive sampling sums more samples, so 1e-4 (not measured)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_single_level_matches_torchvision_roi_align() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 4, 20, 24)).astype(np.float32)).cuda()
    boxes = torch.from_numpy(make_boxes(rng, 10, (80, 96), "normal")).cuda()
    idx = torch.from_numpy(rng.integers(0, 2, 10)).cuda()
    fields = SingleRoIAlignFields(5, 5, 2, 0.25, 1)
    ours = roi_align_single_cuda(x, boxes, idx, fields)
    rois = torch.cat([idx[:, None].float(), boxes], dim=1)
    ref = roi_align(x, rois, (5, 5), 0.25, 2, aligned=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=FP32_TOL)  # not measured: no GPU yet
    ours32 = roi_align_single_cuda(x, boxes, idx.int(), fields)
    torch.testing.assert_close(ours32, ref, rtol=0, atol=FP32_TOL)


def test_half_to_float_launcher_converts_fp16_rois() -> None:
    """The single-level TensorRT plugin converts FP16 RoIs with this launcher before pooling."""
    src = (torch.rand(4 * 1001, device="cuda") * 800).half()
    dst = torch.full(src.shape, -1.0, device="cuda")
    lib = _library.load(_library.CUDA)
    rc = lib.maskrt_roialign_cuda_half_to_float(src.data_ptr(), dst.data_ptr(), src.numel(), None)
    assert rc == 0
    torch.cuda.synchronize()
    assert torch.equal(dst, src.float())  # exact: every FP16 value is a float32 value
