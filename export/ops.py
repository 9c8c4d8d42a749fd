"""Traceable ops that export to exactly one ONNX node each.

* :class:`MultiScaleRoIAlign` becomes one ``maskrt::MultiScaleRoIAlign`` node (defined by the model
  local function of :mod:`maskrt.export.functions`), so graph surgery finds each multi-level
  RoIAlign unit by domain and op type (both from :mod:`maskrt.plugins.contract`).
* :func:`batched_nms` becomes one standard ``NonMaxSuppression`` node over a batch of box sets and
  a set of classes per batch entry -- torchvision's per-class NMS without the coordinate offsets.

Their PyTorch ``forward`` computes the same thing as the exported node, so the deploy module gives
the same answers when run eagerly as the ONNX graph gives in ONNX Runtime.
"""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor
from torchvision.ops import nms, roi_align

from maskrt.plugins.contract import (
    LEVEL_EPS,
    UNIT_DOMAIN,
    UNIT_OP_TYPE,
    MultiLevelRoIAlignFields,
)

# One RoIAlign unit's constants: the multi-level plugin's fields, which are the unit node's
# attributes (one definition, in maskrt.plugins.contract).
RoIAlignUnit: TypeAlias = MultiLevelRoIAlignFields


def roi_levels(rois: Tensor, unit: RoIAlignUnit) -> Tensor:
    """Feature level index (0 = finest) of each RoI ``[M, 4]``, as torchvision's LevelMapper."""
    k_min, k_max = unit.level_range
    area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
    s = torch.sqrt(area)
    eps = torch.tensor(LEVEL_EPS, dtype=s.dtype)
    lvl = torch.floor(unit.canonical_level + torch.log2(s / unit.canonical_scale) + eps)
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


def multiscale_roi_align_reference(
    features: list[Tensor], rois: Tensor, unit: RoIAlignUnit
) -> Tensor:
    """Pool ``rois`` ``[B, N, 4]`` (image pixels) from its level: ``[B, N, C, P, P]``.

    Each RoI is pooled once, from its own level, as the unit's ONNX function does; a RoI whose
    level is undefined (a degenerate box) is pooled from level 0, as there.
    """
    b, n = rois.shape[0], rois.shape[1]
    flat = rois.reshape(-1, 4)
    batch_idx = torch.arange(b, dtype=flat.dtype, device=flat.device).repeat_interleave(n)
    levels = roi_levels(flat, unit)
    levels = torch.where((levels >= 0) & (levels < len(features)), levels, 0)
    p = unit.output_size
    out = flat.new_zeros((flat.shape[0], features[0].shape[1], p, p), dtype=features[0].dtype)
    for level, (feature, scale) in enumerate(zip(features, unit.spatial_scales)):
        idx = torch.nonzero(levels == level).reshape(-1)
        out[idx] = roi_align(
            feature,
            torch.cat([batch_idx[idx, None], flat[idx]], dim=1),
            output_size=p,
            spatial_scale=scale,
            sampling_ratio=unit.sampling_ratio,
            aligned=bool(unit.aligned),
        )
    return out.reshape(b, n, *out.shape[1:])


class _MultiScaleRoIAlignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit: RoIAlignUnit, rois: Tensor, *features: Tensor) -> Tensor:  # type: ignore[override]
        return multiscale_roi_align_reference(list(features), rois, unit)

    @staticmethod
    def symbolic(g, unit: RoIAlignUnit, rois, *features):  # type: ignore[no-untyped-def]
        attrs = unit.field_attributes()
        out = g.op(
            f"{UNIT_DOMAIN}::{UNIT_OP_TYPE}",
            *features,
            rois,
            output_size_i=attrs["output_size"],
            sampling_ratio_i=attrs["sampling_ratio"],
            aligned_i=attrs["aligned"],
            spatial_scales_f=attrs["spatial_scales"],
            canonical_scale_i=attrs["canonical_scale"],
            canonical_level_i=attrs["canonical_level"],
        )
        p = unit.output_size
        out.setType(features[0].type().with_sizes([None, None, None, p, p]))
        return out


def multiscale_roi_align(features: list[Tensor], rois: Tensor, unit: RoIAlignUnit) -> Tensor:
    """One RoIAlign unit: ``features`` (L maps ``[B, C, H_l, W_l]``), ``rois`` ``[B, N, 4]`` ->
    ``[B, N, C, P, P]``."""
    return _MultiScaleRoIAlignFn.apply(unit, rois, *features)


def nms_threshold_f32(threshold: float) -> float:
    """The float32 IoU threshold that decides like torchvision's double one.

    torchvision suppresses when ``float_iou > double_threshold``; ONNX compares two float32
    values. Rounding the threshold down to float32 keeps every decision the same.
    """
    t = torch.tensor(threshold, dtype=torch.float32)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf")))
    return float(t)


def _nms_reference(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    rows = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            cand = torch.nonzero(scores[b, c] > score_threshold).reshape(-1)
            keep = cand[nms(boxes[b, cand], scores[b, c, cand], iou_threshold)][:max_per_class]
            col = torch.full_like(keep, b)
            rows.append(torch.stack([col, torch.full_like(keep, c), keep], dim=1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows, 0)


class _BatchedNMSFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_threshold: float
    ) -> Tensor:
        return _nms_reference(boxes, scores, max_per_class, iou, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score_threshold):  # type: ignore[no-untyped-def]
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def batched_nms(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """ONNX NonMaxSuppression: ``boxes`` ``[NB, N, 4]`` (x1, y1, x2, y2), ``scores`` ``[NB, C, N]``.

    Returns ``[S, 3]`` int64 rows (batch, class, box) of kept boxes, per (batch, class) in
    descending score order. Boxes scoring ``<= score_threshold`` never take part.
    """
    return _BatchedNMSFn.apply(
        boxes, scores, max_per_class, nms_threshold_f32(iou_threshold), score_threshold
    )
