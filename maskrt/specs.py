"""Model specs: everything needed to rebuild a supported torchvision detector.

A :class:`ModelSpec` is plain data (JSON-serialisable), carried inside every maskrt
checkpoint and every exported ONNX file, so that later stages need only the file.
:func:`build_model` turns a spec into a ``torch.nn.Module`` in eval mode.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Architectures we can rebuild. The demo model is ours; the others are torchvision builders.
DEMO_ARCH = "demo_maskrcnn"
TORCHVISION_ARCHS = (
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
)
ARCHS = (DEMO_ARCH, *TORCHVISION_ARCHS)

# The synthetic shapes dataset's categories (COCO ids 1..3); index 0 is background.
SHAPES_CATEGORIES = ("circle", "square", "triangle")


class SpecError(ValueError):
    """A model spec that cannot describe a supported model."""


@dataclass(frozen=True)
class ModelSpec:
    """What a detector is, independent of its weights.

    ``num_classes`` counts the background class, as torchvision does. ``category_names``
    names classes 1..num_classes-1 (empty: unnamed). The thresholds are torchvision's
    inference parameters with the same names and defaults.
    """

    arch: str
    num_classes: int = 91
    num_keypoints: int = 17
    category_names: tuple[str, ...] = ()
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    # Training-time sampling sizes; they do not change inference but rebuild the module exactly.
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise SpecError(f"unknown architecture {self.arch!r}; supported: {', '.join(ARCHS)}")
        if self.num_classes < 2:
            raise SpecError(
                f"num_classes must count background and at least one class, got {self.num_classes}"
            )
        if self.category_names and len(self.category_names) != self.num_classes - 1:
            raise SpecError(
                f"{len(self.category_names)} category names for {self.num_classes - 1} classes"
            )
        if self.min_size <= 0 or self.max_size < self.min_size:
            raise SpecError(f"bad resize limits min_size={self.min_size} max_size={self.max_size}")

    @property
    def has_masks(self) -> bool:
        return self.arch == DEMO_ARCH or self.arch.startswith("maskrcnn")

    @property
    def has_keypoints(self) -> bool:
        return self.arch.startswith("keypointrcnn")

    def class_name(self, label: int) -> str:
        if 1 <= label <= len(self.category_names):
            return self.category_names[label - 1]
        return str(label)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["category_names"] = list(self.category_names)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown model spec fields: {', '.join(sorted(unknown))}")
        if "arch" not in d:
            raise SpecError("model spec has no 'arch'")
        d = dict(d)
        for key in ("category_names", "image_mean", "image_std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)


def demo_spec() -> ModelSpec:
    """The small Mask R-CNN that maskrt trains on synthetic shapes (128-px images)."""
    return ModelSpec(
        arch=DEMO_ARCH,
        num_classes=len(SHAPES_CATEGORIES) + 1,
        category_names=SHAPES_CATEGORIES,
        min_size=128,
        max_size=224,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=300,
        box_detections_per_img=50,
        # Training sample sizes below torchvision's (256 anchors, 512 RoIs per image) and fewer
        # training proposals (600/300 instead of 2000/2000): iterations ~2x cheaper on 2 cores.
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
    )


def default_spec(arch: str, **changes: Any) -> ModelSpec:
    """torchvision's defaults for ``arch`` (COCO: 91 classes), or the demo spec."""
    base = demo_spec() if arch == DEMO_ARCH else ModelSpec(arch=arch)
    if arch.startswith("keypointrcnn") and "num_classes" not in changes:
        changes["num_classes"] = 2
    return base.replace(**changes)


def _torchvision_kwargs(spec: ModelSpec) -> dict[str, Any]:
    return dict(
        min_size=spec.min_size,
        max_size=spec.max_size,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n_test,
        rpn_nms_thresh=spec.rpn_nms_thresh,
        rpn_score_thresh=spec.rpn_score_thresh,
        box_score_thresh=spec.box_score_thresh,
        box_nms_thresh=spec.box_nms_thresh,
        box_detections_per_img=spec.box_detections_per_img,
        rpn_batch_size_per_image=spec.rpn_batch_size_per_image,
        box_batch_size_per_image=spec.box_batch_size_per_image,
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n_train,
    )


def _build_demo(spec: ModelSpec) -> Any:
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    channels = 64
    # Trained from scratch, so its batch norms must learn (torchvision freezes them only because
    # its backbones start from ImageNet statistics).
    trunk = resnet18(weights=None)
    backbone = BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=channels,
    )
    return MaskRCNN(
        backbone,
        num_classes=None,
        box_head=TwoMLPHead(channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, spec.num_classes),
        mask_head=MaskRCNNHeads(channels, [channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, spec.num_classes),
        **_torchvision_kwargs(spec),
    )


def build_model(spec: ModelSpec) -> Any:
    """A freshly initialised ``torch.nn.Module`` for ``spec``, in eval mode, no downloads."""
    import torchvision.models.detection as tvd

    if spec.arch == DEMO_ARCH:
        model = _build_demo(spec)
    else:
        builder = getattr(tvd, spec.arch)
        kwargs = _torchvision_kwargs(spec)
        if spec.has_keypoints:
            kwargs["num_keypoints"] = spec.num_keypoints
        model = builder(weights=None, weights_backbone=None, num_classes=spec.num_classes, **kwargs)
    return model.eval()
