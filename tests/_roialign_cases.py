"""Shared inputs and torchvision oracles for the RoIAlign plugin tests."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

BOX_KINDS = ("normal", "degenerate", "negative", "outside", "tiny", "huge", "boundary")

# Our CPU RoIAlign (alone, or as the plugin node in a surgered graph) against torchvision, ONNX's
# reference or ORT's RoiAlign, in float32: measured 0 everywhere (the same arithmetic, compiled
# without FMA contraction), ORT 1.31.1 and 1.32.0; 1e-5 leaves room for a compiler or kernel that
# contracts a*b+c into an FMA (test_plugin_cuda: nvcc does, ~1e-6).
FP32_TOL = 1e-5


def make_features(
    rng: np.random.Generator,
    batch: int,
    channels: int,
    image_hw: tuple[int, int],
    scales: list[float],
) -> list[np.ndarray]:
    """One ``[B, C, H*s, W*s]`` float32 map per scale (sizes as an FPN backbone makes them)."""
    return [
        rng.standard_normal(
            (batch, channels, max(1, int(image_hw[0] * s)), max(1, int(image_hw[1] * s)))
        ).astype(np.float32)
        for s in scales
    ]


def make_boxes(
    rng: np.random.Generator, n: int, image_hw: tuple[int, int], kind: str
) -> np.ndarray:
    """``[n, 4]`` float32 boxes of one of :data:`BOX_KINDS`."""
    h, w = image_hw
    x1 = rng.uniform(0, w, n)
    y1 = rng.uniform(0, h, n)
    bw = rng.uniform(1, w / 2, n)
    bh = rng.uniform(1, h / 2, n)
    if kind == "degenerate":  # zero area: a line or a point
        bw = np.where(rng.random(n) < 0.5, 0.0, bw)
        bh = np.zeros(n)
    elif kind == "negative":  # x2 < x1 and/or y2 < y1
        bw = -bw
        bh = np.where(rng.random(n) < 0.5, -bh, bh)
    elif kind == "outside":
        x1 = rng.uniform(-2 * w, 2 * w, n)
        y1 = rng.uniform(-2 * h, 2 * h, n)
    elif kind == "tiny":
        bw = rng.uniform(0, 1.5, n)
        bh = rng.uniform(0, 1.5, n)
    elif kind == "huge":
        x1 = rng.uniform(-w, w / 4, n)
        y1 = rng.uniform(-h, h / 4, n)
        bw = rng.uniform(w, 4 * w, n)
        bh = rng.uniform(h, 4 * h, n)
    elif kind == "boundary":  # sqrt(area) = 224 * 2^k, a few float32 ulps either way
        side = 224.0 * 2.0 ** rng.integers(-3, 3, n)
        side32 = side.astype(np.float32)
        side32 = (side32.view(np.int32) + rng.integers(-3, 4, n).astype(np.int32)).view(np.float32)
        bw = side32.astype(np.float64)
        bh = side32.astype(np.float64)
        x1 = np.zeros(n)  # at the origin the float32 side survives x2 - x1 exactly
        y1 = np.zeros(n)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)


def torchvision_multilevel(
    features: list[np.ndarray],
    rois: np.ndarray,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    scales: list[float],
    image_hw: tuple[int, int],
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> np.ndarray:
    """torchvision's answer, ``[B, N, C, P, P]`` float32.

    ``aligned=False`` runs ``MultiScaleRoIAlign`` itself (it infers the scales from the feature
    and image sizes); ``aligned=True``, which it does not offer, runs torchvision's LevelMapper and
    ``roi_align(aligned=True)`` level by level, exactly as its pooler does.
    """
    b, n = rois.shape[:2]
    feats = [torch.from_numpy(f).float() for f in features]
    boxes = [torch.from_numpy(rois[i]) for i in range(b)]
    c = feats[0].shape[1]
    if not aligned:
        names = [str(i) for i in range(len(feats))]
        pooler = MultiScaleRoIAlign(
            names,
            output_size,
            sampling_ratio,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )
        out = pooler(dict(zip(names, feats)), boxes, [image_hw] * b)
        assert pooler.scales == list(scales), (pooler.scales, scales)
        return out.reshape(b, n, c, output_size, output_size).numpy()
    ids = torch.cat([torch.full((n, 1), float(i)) for i in range(b)]) if b else torch.zeros(0, 1)
    rois_t = torch.cat([ids, torch.from_numpy(rois.reshape(-1, 4))], dim=1)
    result = torch.zeros((b * n, c, output_size, output_size))
    if len(feats) == 1:
        result = roi_align(feats[0], rois_t, output_size, scales[0], sampling_ratio, aligned=True)
    else:
        k_min = int(-torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item())
        k_max = int(-torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item())
        levels = LevelMapper(k_min, k_max, canonical_scale, canonical_level)(boxes)
        for lvl, (feat, scale) in enumerate(zip(feats, scales)):
            idx = torch.where(levels == lvl)[0]
            result[idx] = roi_align(
                feat, rois_t[idx], output_size, scale, sampling_ratio, aligned=True
            )
    return result.reshape(b, n, c, output_size, output_size).numpy()
