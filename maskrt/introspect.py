"""Read a live torchvision two-stage detector into a :class:`~maskrt.specs.ModelSpec`.

:func:`spec_from_module` takes any ``GeneralizedRCNN`` (Faster, Mask or Keypoint R-CNN, on any
backbone: an FPN with any number of levels or a single feature map) and reads off it everything
later stages need: transform sizes, mean/std, RPN and box-head thresholds, class count, heads
present, keypoint count; and, as a record, the anchors and the RoI poolers.

It refuses, with one line naming the part, what maskrt cannot deploy faithfully: the export
re-implements torchvision's RPN, RoI heads and transform with static shapes, so a subclass of
one of them (whose behaviour may differ), a RoI pooler other than ``MultiScaleRoIAlign`` or
with a non-square output, a pooler that consumes none of the backbone's feature maps, or a
transform that pads to another multiple than the deploy contract's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.specs import CUSTOM_ARCH, ModelSpec, SpecError

# The probe image the backbone runs on to list its feature maps (any multiple of 32 works).
PROBE_HW = (256, 256)


class UnsupportedModelError(MaskrtError):
    """A module maskrt cannot deploy faithfully; the message names the part."""


def _exact(obj: Any, cls: type, part: str) -> None:
    if type(obj) is not cls:
        raise UnsupportedModelError(
            f"{part} is a {type(obj).__name__}, not torchvision's {cls.__name__}: maskrt "
            f"re-implements {cls.__name__} for export and cannot follow a subclass"
        )


def backbone_features(backbone: Any, x: Any) -> OrderedDict[str, Any]:
    """The backbone's feature maps by name, as ``GeneralizedRCNN`` sees them (a bare tensor
    is the single map "0")."""
    import torch

    features = backbone(x)
    if isinstance(features, torch.Tensor):
        return OrderedDict([("0", features)])
    if not isinstance(features, dict):
        raise UnsupportedModelError(
            f"backbone returns a {type(features).__name__}; torchvision detectors need a tensor "
            "or a dict of feature maps"
        )
    return OrderedDict(features)


def pooled_names(pooler: Any, feature_names: list[str]) -> list[str]:
    """The feature maps ``pooler`` really pools: its ``featmap_names`` that the backbone
    returns, in the backbone's order (torchvision's MultiScaleRoIAlign filters the same way)."""
    wanted = set(pooler.featmap_names)
    return [n for n in feature_names if n in wanted]


def _pooler_record(name: str, pooler: Any, feature_names: list[str]) -> dict[str, Any]:
    from torchvision.ops import MultiScaleRoIAlign

    part = f"roi_heads.{name}_roi_pool"
    _exact(pooler, MultiScaleRoIAlign, part)
    size = pooler.output_size
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise UnsupportedModelError(
                f"{part} has a non-square output size {tuple(size)}; the RoIAlign plugin "
                "pools square outputs only"
            )
        size = size[0]
    used = pooled_names(pooler, feature_names)
    if not used:
        raise UnsupportedModelError(
            f"{part} pools feature maps {list(pooler.featmap_names)} but the backbone returns "
            f"{feature_names}"
        )
    if len(used) > 8:
        raise UnsupportedModelError(f"{part} pools {len(used)} feature maps; at most 8")
    return {
        "featmap_names": used,
        "output_size": int(size),
        "sampling_ratio": int(pooler.sampling_ratio),
        "canonical_scale": int(pooler.canonical_scale),
        "canonical_level": int(pooler.canonical_level),
    }


def _heads_present(heads: Any, name: str) -> bool:
    parts = [getattr(heads, f"{name}_{p}", None) for p in ("roi_pool", "head", "predictor")]
    if all(p is None for p in parts):
        return False
    if any(p is None for p in parts):
        raise UnsupportedModelError(
            f"roi_heads has only part of a {name} head ({name}_roi_pool, {name}_head and "
            f"{name}_predictor must all be set); torchvision would not run it"
        )
    return True


def _head_output(heads: Any, name: str, features: Any, names: list[str]) -> tuple[int, int]:
    """(channels, size) of the named head's output [R, channels, size, size], from running
    its pooler, head and predictor on one RoI over the probe image."""
    import torch

    pooler = getattr(heads, f"{name}_roi_pool")
    _pooler_record(name, pooler, names)  # refuse an unusable pooler before running it
    box = [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
    pooled = pooler(features, box, [PROBE_HW])
    out = getattr(heads, f"{name}_predictor")(getattr(heads, f"{name}_head")(pooled))
    if out.dim() != 4 or out.shape[-1] != out.shape[-2]:
        raise UnsupportedModelError(
            f"roi_heads.{name}_predictor returns {list(out.shape)}; maskrt needs square maps "
            "[R, channels, size, size]"
        )
    return int(out.shape[1]), int(out.shape[-1])


def spec_from_module(
    model: Any,
    *,
    arch: str = CUSTOM_ARCH,
    category_names: tuple[str, ...] = (),
    factory: str | None = None,
    factory_args: dict[str, Any] | None = None,
) -> ModelSpec:
    """The spec of ``model``, a torchvision ``GeneralizedRCNN``, read off the module.

    ``arch`` names the builder that made it (default "custom"); ``factory``/``factory_args``
    record the user's builder. Raises :class:`UnsupportedModelError` naming the part that
    maskrt cannot deploy faithfully. Runs the backbone once on a 256x256 zero image.
    """
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    if not isinstance(model, GeneralizedRCNN):
        raise UnsupportedModelError(
            f"maskrt deploys torchvision two-stage detectors (GeneralizedRCNN: Faster, Mask, "
            f"Keypoint R-CNN), not a {type(model).__name__}"
        )
    transform, rpn, heads = model.transform, model.rpn, model.roi_heads
    _exact(transform, GeneralizedRCNNTransform, "transform")
    _exact(rpn, RegionProposalNetwork, "rpn")
    _exact(rpn.anchor_generator, AnchorGenerator, "rpn.anchor_generator")
    _exact(heads, RoIHeads, "roi_heads")
    if int(transform.size_divisible) != contract.SIZE_DIVISIBLE:
        raise UnsupportedModelError(
            f"transform pads to multiples of {transform.size_divisible}; the deploy contract "
            f"pads to {contract.SIZE_DIVISIBLE}"
        )
    cls_score = getattr(heads.box_predictor, "cls_score", None)
    if not isinstance(cls_score, torch.nn.Linear):
        raise UnsupportedModelError(
            "roi_heads.box_predictor has no cls_score Linear layer (torchvision's "
            "FastRCNNPredictor layout), so its class count is unknown"
        )
    has_masks = _heads_present(heads, "mask")
    has_keypoints = _heads_present(heads, "keypoint")

    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = backbone_features(model.backbone, torch.zeros(1, 3, *PROBE_HW))
        names = list(features)
        mask_size, (num_keypoints, heatmap_size) = 28, (17, 56)
        if has_masks:
            _, mask_size = _head_output(heads, "mask", features, names)
        if has_keypoints:
            num_keypoints, heatmap_size = _head_output(heads, "keypoint", features, names)
    model.train(was_training)
    gen = rpn.anchor_generator
    if len(gen.sizes) != len(names):
        raise UnsupportedModelError(
            f"rpn.anchor_generator has anchor sizes for {len(gen.sizes)} feature maps but the "
            f"backbone returns {len(names)} ({names})"
        )
    poolers = {"box": _pooler_record("box", heads.box_roi_pool, names)}
    if has_masks:
        poolers["mask"] = _pooler_record("mask", heads.mask_roi_pool, names)
    if has_keypoints:
        poolers["keypoint"] = _pooler_record("keypoint", heads.keypoint_roi_pool, names)
    structure = {
        "family": type(model).__name__,
        "backbone": type(model.backbone).__name__,
        "feature_maps": names,
        "anchor_sizes": [list(map(int, s)) for s in gen.sizes],
        "aspect_ratios": [list(map(float, r)) for r in gen.aspect_ratios],
        "poolers": poolers,
    }
    fixed_size = transform.fixed_size
    try:
        return ModelSpec(
            arch=arch,
            num_classes=int(cls_score.out_features),
            num_keypoints=num_keypoints,
            category_names=tuple(category_names),
            min_size=int(transform.min_size[-1]),  # torchvision resizes to the last at inference
            max_size=int(transform.max_size),
            image_mean=tuple(float(v) for v in transform.image_mean),  # type: ignore[arg-type]
            image_std=tuple(float(v) for v in transform.image_std),  # type: ignore[arg-type]
            rpn_pre_nms_top_n_test=int(rpn._pre_nms_top_n["testing"]),
            rpn_post_nms_top_n_test=int(rpn._post_nms_top_n["testing"]),
            rpn_nms_thresh=float(rpn.nms_thresh),
            rpn_score_thresh=float(rpn.score_thresh),
            box_score_thresh=float(heads.score_thresh),
            box_nms_thresh=float(heads.nms_thresh),
            box_detections_per_img=int(heads.detections_per_img),
            rpn_batch_size_per_image=int(rpn.fg_bg_sampler.batch_size_per_image),
            box_batch_size_per_image=int(heads.fg_bg_sampler.batch_size_per_image),
            rpn_pre_nms_top_n_train=int(rpn._pre_nms_top_n["training"]),
            rpn_post_nms_top_n_train=int(rpn._post_nms_top_n["training"]),
            fixed_size=None if fixed_size is None else (int(fixed_size[0]), int(fixed_size[1])),
            mask_size=mask_size,
            keypoint_heatmap_size=heatmap_size,
            mask_head=has_masks,
            keypoint_head=has_keypoints,
            factory=factory,
            factory_args=dict(factory_args or {}),
            structure=structure,
        )
    except SpecError as e:
        raise UnsupportedModelError(f"cannot describe the model: {e}") from None


# Fields that change what the deployed model computes or how its inputs are prepared; a spec
# handed to export together with a module must agree with the module on all of them.
INFERENCE_FIELDS = (
    "num_classes",
    "num_keypoints",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_score_thresh",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "fixed_size",
    "mask_size",
    "keypoint_heatmap_size",
    "mask_head",
    "keypoint_head",
)


def reconcile(given: ModelSpec, read: ModelSpec) -> ModelSpec:
    """``given`` (a caller's spec) completed by ``read`` (read off the module): refuses a
    disagreement on anything that changes inference, keeps the caller's names and factory."""
    for name in INFERENCE_FIELDS:
        if name in ("num_keypoints", "keypoint_heatmap_size") and not read.has_keypoints:
            continue
        if name == "mask_size" and not read.has_masks:
            continue
        a, b = getattr(given, name), getattr(read, name)
        if a != b:
            raise MaskrtError(f"the spec says {name}={a!r} but the module has {b!r}")
    return read.replace(
        arch=given.arch,
        category_names=given.category_names,
        factory=given.factory,
        factory_args=dict(given.factory_args),
        extra=dict(given.extra),
    )
