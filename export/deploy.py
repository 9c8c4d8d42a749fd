"""Static-shape twin of torchvision's GeneralizedRCNN inference, for tracing to ONNX.

:class:`DeployModel` reuses the torchvision model's own modules (backbone, RPN head, anchor
generator, box coders, RoI heads, predictors) and rewrites only the steps whose shapes depend on
the data. Instead of dropping rows it pads and masks them:

* RPN: per level, the top ``pre_nms_top_n`` anchors (levels with fewer anchors are padded with
  invalid rows), so there are always ``L * pre_nms_top_n`` candidates; clipping, small-box and
  score filters turn rows invalid; per-level NMS is one NonMaxSuppression whose batch entries
  are the (image, level) pairs; the top ``post_nms_top_n`` kept boxes over all levels become
  the proposals (invalid ones padded).
* Box head: all ``post_nms_top_n`` proposals are classified; per-class NMS is one
  NonMaxSuppression whose batch entries are the (image, class) pairs; the top K kept become the
  detections, padded to K = ``box_detections_per_img``.
* Masks / keypoint heatmaps are computed for the K padded detections and not pasted. With
  ``compact_heads`` the mask/keypoint units pool only the first n rows of each image (n: the
  most detections in the batch) and the heads run only on the detected rows (NonZero, Gather,
  then ScatterND back into the padded output): shapes inside become data-dependent, the outputs
  stay padded. That saves the padding rows' convolutions on runtimes that size tensors per run (ONNX
  Runtime on CPU); the default keeps every shape static, as TensorRT builds best.

Shapes: ``images`` [B, 3, H, W] float32, ``image_sizes`` [B, 2] int32 (height, width).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.rpn import permute_and_flatten
from torchvision.ops import MultiScaleRoIAlign as TvMultiScaleRoIAlign
from torchvision.ops.poolers import _setup_scales

from maskrt.errors import MaskrtError
from maskrt.introspect import backbone_features, pooled_names

from .ops import RoIAlignUnit, batched_nms, multiscale_roi_align

# Scores of rows that must never be kept: below NMS's score threshold, which is below every
# probability.
_DROPPED = -1.0
_NMS_SCORE_THRESHOLD = -0.5
_RPN_MIN_SIZE = 1e-3  # torchvision RegionProposalNetwork.min_size
_BOX_MIN_SIZE = 1e-2  # torchvision RoIHeads.postprocess_detections

# Debug outputs (``with_proposals``), after the contract's: not part of the deploy contract.
DEBUG_OUTPUTS = ("proposals", "proposal_scores", "num_proposals")

# (feature maps [B, C, H_l, W_l] finest first, RoIs [B, N, 4], unit) -> [B, N, C, P, P]
RoIAlignFn = Callable[[list[Tensor], Tensor, RoIAlignUnit], Tensor]


def roi_align_unit(
    pooler: nn.Module, features: list[Tensor], image_hw: tuple[int, int]
) -> RoIAlignUnit:
    """The constants of torchvision's MultiScaleRoIAlign ``pooler`` for these feature maps."""
    if not isinstance(pooler, TvMultiScaleRoIAlign):
        raise MaskrtError(f"unsupported RoI pooler {type(pooler).__name__}")
    size = pooler.output_size
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise MaskrtError(f"unsupported non-square RoIAlign output size {tuple(size)}")
        size = size[0]
    scales, _ = _setup_scales(features, [image_hw], pooler.canonical_scale, pooler.canonical_level)
    return RoIAlignUnit(
        output_size=int(size),
        sampling_ratio=int(pooler.sampling_ratio),
        spatial_scales=tuple(float(s) for s in scales),
        aligned=0,  # torchvision's MultiScaleRoIAlign always pools with aligned=False
        canonical_scale=int(pooler.canonical_scale),
        canonical_level=int(pooler.canonical_level),
    )


def _clip(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip ``boxes`` [B, ..., 4] to each image's (height, width) ``image_sizes`` [B, 2]."""
    hw = image_sizes.to(boxes.dtype)
    upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)
    upper = upper.reshape([hw.shape[0]] + [1] * (boxes.dim() - 2) + [4])
    return torch.min(torch.max(boxes, torch.zeros_like(upper)), upper)


def _big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision's remove_small_boxes as a mask: width and height >= min_size."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def _kept_mask(selected: Tensor, rows: Tensor, num_cols: int) -> Tensor:
    """[R, num_cols] bool: True at (selected[:, 0], selected[:, 2]); ``rows`` is any [R] tensor."""
    flat = selected[:, 0] * num_cols + selected[:, 2]
    kept = torch.zeros_like(rows, dtype=torch.float32).reshape(-1, 1).expand(-1, num_cols)
    kept = kept.reshape(-1).scatter(0, flat, torch.ones_like(flat, dtype=torch.float32))
    return kept.reshape(-1, num_cols) > 0


def _top_k_padded(scores: Tensor, k: int, n: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` of ``scores`` [B, n] (padding with -inf when n < k): values, indices."""
    if n < k:
        scores = F.pad(scores, (0, k - n), value=float("-inf"))
    return scores.topk(k, dim=1)


def _sigmoid(x: Tensor) -> Tensor:
    """``1 / (1 + exp(-x))``, spelled out so that it exports as Exp, Add and Reciprocal.

    ONNX Runtime's CPU Sigmoid is accurate only in absolute terms: its small outputs are coarse
    multiples of 2**-24, so RPN proposals scoring ~1e-7 tie and are ranked differently from
    torchvision's (accurate) sigmoid, changing which proposals reach the box head. Exp keeps the
    relative accuracy that the ranking needs.
    """
    return torch.reciprocal(1.0 + torch.exp(-x))


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, D], idx [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class DeployModel(nn.Module):
    """Wrap an eval-mode torchvision Mask/Faster/Keypoint R-CNN for static-shape export."""

    mean: Tensor
    std: Tensor
    model: Any  # torchvision GeneralizedRCNN (its submodules are reached by attribute)

    def __init__(
        self,
        model: Any,
        example_features_hw: tuple[int, int] = (256, 256),
        with_proposals: bool = False,
        roi_align: RoIAlignFn = multiscale_roi_align,
        compact_heads: bool = False,
    ):
        """``roi_align`` pools every RoIAlign unit; the default traces to one
        ``maskrt::MultiScaleRoIAlign`` node. Another implementation (e.g. the plugin's CUDA
        kernel) runs the deploy model eagerly with it; it cannot be exported. ``compact_heads``:
        see the module's docstring."""
        super().__init__()
        self.roi_align = roi_align
        self.compact_heads = compact_heads
        # Debug outputs after the contract's: proposals [B, P, 4], proposal_scores [B, P]
        # (objectness probabilities) and num_proposals [B] int32.
        self.with_proposals = with_proposals
        self.model = model
        rpn, heads = model.rpn, model.roi_heads
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.transform.image_std).reshape(1, 3, 1, 1))
        self.pre_nms_top_n = int(rpn._pre_nms_top_n["testing"])
        self.post_nms_top_n = int(rpn._post_nms_top_n["testing"])
        self.rpn_nms_thresh = float(rpn.nms_thresh)
        self.rpn_score_thresh = float(rpn.score_thresh)
        self.box_score_thresh = float(heads.score_thresh)
        self.box_nms_thresh = float(heads.nms_thresh)
        self.detections_per_img = int(heads.detections_per_img)
        self.has_masks = heads.has_mask()
        self.has_keypoints = heads.has_keypoint()
        self.units = self._units(example_features_hw)

    @torch.no_grad()
    def _units(self, hw: tuple[int, int]) -> dict[str, RoIAlignUnit]:
        """Pooler constants, from the feature maps of a padded example image."""
        feats = backbone_features(self.model.backbone, torch.zeros(1, 3, *hw))
        heads = self.model.roi_heads
        poolers = {"box": heads.box_roi_pool}
        if self.has_masks:
            poolers["mask"] = heads.mask_roi_pool
        if self.has_keypoints:
            poolers["keypoint"] = heads.keypoint_roi_pool
        units = {}
        for name, pooler in poolers.items():
            maps = [feats[k] for k in pooled_names(pooler, list(feats))]
            units[name] = roi_align_unit(pooler, maps, hw)
        return units

    def _pool(self, name: str, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """[B, N, 4] RoIs -> [B * N, C, P, P] through the named RoIAlign unit."""
        pooler = getattr(self.model.roi_heads, f"{name}_roi_pool")
        maps = [features[k] for k in pooled_names(pooler, list(features))]
        pooled = self.roi_align(maps, rois, self.units[name])
        return pooled.flatten(0, 1)

    # ---------------------------------------------------------------- RPN

    def _anchors(self, images: Tensor, features: list[Tensor]) -> list[Tensor]:
        """Per-level anchors [H_l * W_l * A, 4], exactly as torchvision's AnchorGenerator."""
        gen = self.model.rpn.anchor_generator
        grid_sizes = [f.shape[-2:] for f in features]
        image_size = images.shape[-2:]
        strides = [
            [
                torch.empty((), dtype=torch.int64).fill_(image_size[0] // g[0]),
                torch.empty((), dtype=torch.int64).fill_(image_size[1] // g[1]),
            ]
            for g in grid_sizes
        ]
        gen.set_cell_anchors(features[0].dtype, features[0].device)
        return gen.grid_anchors(grid_sizes, strides)

    def proposals(
        self, images: Tensor, features: list[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """RPN proposals [B, post_nms_top_n, 4], their objectness probabilities and their
        validity (both [B, post_nms_top_n]; -inf scores on padding rows)."""
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        anchors = self._anchors(images, features)
        pre = self.pre_nms_top_n
        boxes_l, logits_l, valid_l = [], [], []
        for obj, reg, anc in zip(objectness, deltas, anchors):
            n, a, h, w = obj.shape
            obj = permute_and_flatten(obj, n, a, 1, h, w).reshape(n, -1)  # [B, HWA]
            reg = permute_and_flatten(reg, n, a, 4, h, w)  # [B, HWA, 4]
            num = obj.shape[1]
            # Pad with `pre` invalid rows so that top-k always takes `pre` rows.
            top, idx = F.pad(obj, (0, pre), value=float("-inf")).topk(pre, dim=1)
            reg = _gather_rows(F.pad(reg, (0, 0, 0, pre)), idx)
            anc = F.pad(anc, (0, 0, 0, pre))[idx]  # [B, pre, 4]
            dec = rpn.box_coder.decode_single(reg.reshape(-1, 4), anc.reshape(-1, 4))
            boxes_l.append(dec.reshape(n, -1, 4))
            logits_l.append(top)
            valid_l.append(idx < num)
        boxes = _clip(torch.cat(boxes_l, 1), image_sizes)  # [B, L*pre, 4]
        probs = _sigmoid(torch.cat(logits_l, 1))
        valid = torch.cat(valid_l, 1) & _big_enough(boxes, _RPN_MIN_SIZE)
        valid = valid & (probs >= self.rpn_score_thresh)

        # Per-level NMS: each (image, level) is one NMS batch item of `pre` boxes. TensorRT's
        # NMS considers only the 5000 best boxes of a batch item (NvInfer.h, INMSLayer), so the
        # levels must not share one; torchvision's batched_nms keeps levels apart the same way.
        num_levels = len(boxes_l)
        nms_boxes = boxes.reshape(-1, pre, 4)  # [B*L, pre, 4]
        nms_scores = torch.where(valid, probs, _DROPPED).reshape(-1, 1, pre)  # [B*L, 1, pre]
        selected = batched_nms(
            nms_boxes, nms_scores, self.post_nms_top_n, self.rpn_nms_thresh, _NMS_SCORE_THRESHOLD
        )
        kept = _kept_mask(selected, nms_scores[:, 0, 0], pre).reshape(-1, num_levels * pre)
        # then the top post_nms_top_n kept boxes over all levels, by score
        ranked = torch.where(kept, probs, float("-inf"))
        top, idx = _top_k_padded(ranked, self.post_nms_top_n, num_levels * pre)
        boxes = F.pad(boxes, (0, 0, 0, max(0, self.post_nms_top_n - num_levels * pre)))
        return _gather_rows(boxes, idx), top, top > float("-inf")

    # ---------------------------------------------------------------- box head

    def detect(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        image_sizes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded detections: boxes [B, K, 4], scores [B, K], labels [B, K] int64, valid [B, K]."""
        heads = self.model.roi_heads
        b, p = proposals.shape[0], self.post_nms_top_n
        x = heads.box_head(self._pool("box", features, proposals))
        class_logits, box_regression = heads.box_predictor(x)
        num_classes = int(heads.box_predictor.cls_score.out_features)
        c1 = num_classes - 1
        boxes = heads.box_coder.decode_single(box_regression, proposals.reshape(-1, 4))
        boxes = _clip(boxes.reshape(b, p, num_classes, 4), image_sizes)[:, :, 1:]  # [B, P, C1, 4]
        scores = F.softmax(class_logits, -1).reshape(b, p, num_classes)[:, :, 1:]  # [B, P, C1]
        valid = proposal_valid[:, :, None] & (scores > self.box_score_thresh)
        valid = valid & _big_enough(boxes, _BOX_MIN_SIZE)

        # Per-class NMS: each (image, class) pair is one NMS batch entry with its P boxes.
        nms_boxes = boxes.permute(0, 2, 1, 3).reshape(-1, p, 4)  # [B*C1, P, 4]
        nms_scores = torch.where(valid, scores, _DROPPED).permute(0, 2, 1).reshape(-1, 1, p)
        k = self.detections_per_img
        selected = batched_nms(nms_boxes, nms_scores, k, self.box_nms_thresh, _NMS_SCORE_THRESHOLD)
        kept = _kept_mask(selected, nms_scores[:, 0, 0], p)  # [B*C1, P]
        kept = kept.reshape(b, c1, p).permute(0, 2, 1).reshape(b, -1)  # torchvision's row order
        ranked = torch.where(kept, scores.reshape(b, -1), float("-inf"))
        top, idx = _top_k_padded(ranked, k, p * c1)
        det_valid = top > float("-inf")
        flat_boxes = boxes.reshape(b, -1, 4)
        flat_boxes = F.pad(flat_boxes, (0, 0, 0, max(0, k - p * c1)))
        det_boxes = torch.where(det_valid[:, :, None], _gather_rows(flat_boxes, idx), 0.0)
        det_scores = torch.where(det_valid, top, 0.0)
        det_labels = torch.where(det_valid, idx % c1 + 1, 0)
        return det_boxes, det_scores, det_labels, det_valid

    # ---------------------------------------------------------------- mask / keypoint heads

    def _head_on_detections(
        self,
        name: str,
        features: dict[str, Tensor],
        boxes: Tensor,
        valid: Tensor,
        head: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        """Pool ``boxes`` [B, K, 4] through the named unit and run ``head(x, rows)`` on them;
        [B, K, ...] with zeros on the rows that ``valid`` [B, K] marks as padding. ``rows`` are
        the row numbers in B*K of the pooled RoIs ``x`` that the head receives."""
        b, k = valid.shape
        if not self.compact_heads:
            out = head(self._pool(name, features, boxes), torch.arange(b * k, device=boxes.device))
            mask = valid.reshape([-1] + [1] * (out.dim() - 1))
            return torch.where(mask, out, 0.0).reshape(b, k, *out.shape[1:])
        # Detections come first in each image (sorted by score): pool the first n rows of every
        # image, n the most detections of any image, and run the head on the detected ones.
        n = valid.sum(1).max()
        # A 0-dim tensor as the end keeps the size dynamic in the trace (an int would freeze it).
        cols = torch.arange(n, device=boxes.device)  # type: ignore[call-overload]
        pooled = self._pool(name, features, boxes.index_select(1, cols))  # [B*n, C, P, P]
        local = torch.nonzero(valid.index_select(1, cols).reshape(-1)).reshape(-1)
        per_image = n.clamp(min=1)  # no rows when n is 0, but ONNX Runtime refuses x % 0
        rows = torch.div(local, per_image, rounding_mode="floor") * k + local % per_image
        out = head(pooled[local], rows)
        padded = torch.zeros_like(valid.reshape(-1), dtype=out.dtype)
        padded = padded.reshape([-1] + [1] * (out.dim() - 1)).expand(-1, *out.shape[1:])
        return padded.index_put((rows,), out).reshape(b, k, *out.shape[1:])

    def masks(
        self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor, valid: Tensor
    ) -> Tensor:
        """Mask probabilities of the predicted class [B, K, 28, 28] (0 on padding rows)."""
        heads = self.model.roi_heads
        flat_labels = labels.reshape(-1)

        def head(x: Tensor, rows: Tensor) -> Tensor:
            logits = heads.mask_predictor(heads.mask_head(x))  # [R, NC, M, M]
            m = logits.shape[-1]
            index = flat_labels[rows].reshape(-1, 1, 1, 1).expand(-1, 1, m, m)
            return _sigmoid(torch.gather(logits, 1, index)).reshape(-1, m, m)

        return self._head_on_detections("mask", features, boxes, valid, head)

    def keypoint_logits(self, features: dict[str, Tensor], boxes: Tensor, valid: Tensor) -> Tensor:
        """Keypoint heatmap logits [B, K, num_keypoints, 56, 56] (0 on padding rows)."""
        heads = self.model.roi_heads

        def head(x: Tensor, rows: Tensor) -> Tensor:
            return heads.keypoint_predictor(heads.keypoint_head(x))  # [R, J, S, S]

        return self._head_on_detections("keypoint", features, boxes, valid, head)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        x = (images - self.mean) / self.std
        features = backbone_features(self.model.backbone, x)
        feature_list = list(features.values())
        proposals, proposal_scores, proposal_valid = self.proposals(x, feature_list, image_sizes)
        boxes, scores, labels, valid = self.detect(features, proposals, proposal_valid, image_sizes)
        outputs: list[Any] = [
            valid.sum(1).to(torch.int32),
            boxes,
            scores,
            labels.to(torch.int32),
        ]
        if self.has_masks:
            outputs.append(self.masks(features, boxes, labels, valid))
        if self.has_keypoints:
            outputs.append(self.keypoint_logits(features, boxes, valid))
        if self.with_proposals:
            scores = torch.where(proposal_valid, proposal_scores, 0.0)
            outputs += [proposals, scores, proposal_valid.sum(1).to(torch.int32)]
        return tuple(outputs)
