"""Model specs: what a torchvision two-stage detector is, apart from its weights.

A :class:`ModelSpec` is plain data (JSON-serialisable), carried inside every maskrt
checkpoint and every exported ONNX file, so that later stages need only the file. It is read
off a live module by :func:`maskrt.introspect.spec_from_module`; :func:`build_model` turns it
back into a ``torch.nn.Module`` in eval mode when it names a builder (one of :data:`ARCHS`, or
the user's own factory function, imported only when the caller allows it).

Specs carry ``spec_version`` ("major.minor", absent = "1.0"): a reader refuses a newer major
version and ignores fields it does not know from a newer minor one.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from maskrt.errors import MaskrtError

# Architectures we can rebuild. The demo models are ours; the others are torchvision builders.
# DEMO_ARCH is what `maskrt train` / `maskrt demo` make; LEGACY_DEMO_ARCH (resnet18 + FPN, 64
# channels, 12.5 M parameters) is the demo model of earlier maskrt versions, kept so that their
# checkpoints still load.
DEMO_ARCH = "demo_maskrcnn_v2"
LEGACY_DEMO_ARCH = "demo_maskrcnn"
DEMO_ARCHS = (DEMO_ARCH, LEGACY_DEMO_ARCH)
TORCHVISION_ARCHS = (
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
ARCHS = (*DEMO_ARCHS, *TORCHVISION_ARCHS)
# Any other GeneralizedRCNN: rebuilt by its ``factory`` when it names one, else not at all.
CUSTOM_ARCH = "custom"

SPEC_VERSION = "1.1"

# The synthetic shapes dataset's categories (COCO ids 1..3); index 0 is background.
SHAPES_CATEGORIES = ("circle", "square", "triangle")


class SpecError(MaskrtError):
    """A model spec that cannot describe a supported model."""


def _version_parts(version: str) -> tuple[int, int]:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise SpecError(f"bad model spec version {version!r}") from None


def _major(version: str) -> int:
    return _version_parts(version)[0]


def _minor(version: str) -> int:
    return _version_parts(version)[1]


def _is_factory_name(name: str) -> bool:
    """'package.module:function' (dotted identifiers on both sides of one colon)."""
    module, sep, function = name.partition(":")
    parts = module.split(".") + function.split(".")
    return bool(sep) and all(p.isidentifier() for p in parts)


@dataclass(frozen=True)
class ModelSpec:
    """What a detector is, independent of its weights.

    ``num_classes`` counts the background class, as torchvision does. ``category_names``
    names classes 1..num_classes-1 (empty: unnamed). The thresholds are torchvision's
    inference parameters with the same names and defaults. ``fixed_size`` is
    ``GeneralizedRCNNTransform.fixed_size``, (width, height) as torchvision orders it.
    ``mask_head`` / ``keypoint_head`` say which heads exist (None: as the arch's name says);
    ``mask_size`` and ``keypoint_heatmap_size`` are their output sizes (torchvision's: 28, 56).
    ``factory`` ("package.module:function") and ``factory_args`` rebuild a custom model;
    ``structure`` records what :func:`maskrt.introspect.spec_from_module` read off the module
    (backbone, feature maps, anchors, RoI poolers): documentation, never needed to run it.
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
    fixed_size: tuple[int, int] | None = None
    mask_size: int = 28
    keypoint_heatmap_size: int = 56
    mask_head: bool | None = None
    keypoint_head: bool | None = None
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    # A record, not a parameter: two specs of the same model are equal with or without it.
    structure: dict[str, Any] = field(default_factory=dict, compare=False)
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS and self.arch != CUSTOM_ARCH:
            raise SpecError(
                f"unknown architecture {self.arch!r}; supported: {', '.join(ARCHS)}, "
                f"or {CUSTOM_ARCH!r} for a model read off its module"
            )
        if _major(self.spec_version) > _major(SPEC_VERSION):
            raise SpecError(
                f"model spec version {self.spec_version} is newer than this maskrt reads "
                f"({SPEC_VERSION}); upgrade maskrt"
            )
        if self.mask_head is None:
            named = self.arch in DEMO_ARCHS or self.arch.startswith("maskrcnn")
            object.__setattr__(self, "mask_head", named)
        if self.keypoint_head is None:
            object.__setattr__(self, "keypoint_head", self.arch.startswith("keypointrcnn"))
        if self.fixed_size is not None:
            object.__setattr__(self, "fixed_size", tuple(int(v) for v in self.fixed_size))
            if len(self.fixed_size) != 2 or min(self.fixed_size) < 1:
                raise SpecError(f"fixed_size must be (width, height), got {self.fixed_size}")
        if self.factory is not None and not _is_factory_name(self.factory):
            raise SpecError(f"factory must be 'package.module:function', got {self.factory!r}")
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
        return bool(self.mask_head)

    @property
    def has_keypoints(self) -> bool:
        return bool(self.keypoint_head)

    @property
    def name(self) -> str:
        """What to call the model in messages: the builder, the factory, or "custom"."""
        return self.factory or self.arch

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's resized (height, width) of an image: ``fixed_size`` when set, else
        the short side scaled to ``min_size`` unless the long side would exceed ``max_size``
        (``F.interpolate(recompute_scale_factor=True)`` floors)."""
        if self.fixed_size is not None:
            return self.fixed_size[1], self.fixed_size[0]
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        return int(math.floor(float(height) * scale)), int(math.floor(float(width) * scale))

    def canvas_size(self) -> tuple[int, int]:
        """The (H, W) of ``images`` that holds every image this model resizes to: its
        ``fixed_size``, else ``max_size`` square (either orientation), rounded up to 32."""
        from maskrt.contract import round_to_divisible

        if self.fixed_size is not None:
            return round_to_divisible(self.fixed_size[1]), round_to_divisible(self.fixed_size[0])
        return round_to_divisible(self.max_size), round_to_divisible(self.max_size)

    def class_name(self, label: int) -> str:
        if 1 <= label <= len(self.category_names):
            return self.category_names[label - 1]
        return str(label)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["category_names"] = list(self.category_names)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        if self.fixed_size is not None:
            d["fixed_size"] = list(self.fixed_size)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Read a spec; fields unknown to this version are refused under its own major version
        (a typo) and ignored under a newer minor one (written by a newer maskrt)."""
        version = str(d.get("spec_version", "1.0"))
        if _major(version) > _major(SPEC_VERSION):
            raise SpecError(
                f"model spec version {version} is newer than this maskrt reads "
                f"({SPEC_VERSION}); upgrade maskrt"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown and _minor(version) <= _minor(SPEC_VERSION):
            raise SpecError(f"unknown model spec fields: {', '.join(sorted(unknown))}")
        if "arch" not in d:
            raise SpecError("model spec has no 'arch'")
        d = {k: v for k, v in d.items() if k in known}
        d["spec_version"] = SPEC_VERSION if _minor(version) > _minor(SPEC_VERSION) else version
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


# torchvision's builders that change FasterRCNN's defaults (their ``defaults`` dicts);
# tests/test_export_models.py checks each against the module the builder makes.
_BUILDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "keypointrcnn_resnet50_fpn": {"num_classes": 2},
    "fasterrcnn_mobilenet_v3_large_fpn": {"rpn_score_thresh": 0.05},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {
        "min_size": 320,
        "max_size": 640,
        "rpn_pre_nms_top_n_test": 150,
        "rpn_post_nms_top_n_test": 150,
        "rpn_score_thresh": 0.05,
    },
}


def default_spec(arch: str, **changes: Any) -> ModelSpec:
    """The spec of torchvision's builder ``arch`` with its defaults (COCO: 91 classes), or
    the demo spec."""
    base = demo_spec().replace(arch=arch) if arch in DEMO_ARCHS else ModelSpec(arch=arch)
    return base.replace(**{**_BUILDER_DEFAULTS.get(arch, {}), **changes})


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


def _build_legacy_demo(spec: ModelSpec) -> Any:
    """The demo model before issue 34: resnet18 + 4-level FPN, 64 channels (12.5 M parameters)."""
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


# The demo model (issue 34): a narrow ResNet-style trunk (one BasicBlock per stage), an FPN on
# its stride 8/16/32 stages plus the max-pooled stride-64 map, 64-channel heads. Its shapes are
# 20-100 px on 128-px images, so stride 4 and torchvision's 512-px anchors buy nothing here.
DEMO_TRUNK_WIDTHS = (32, 64, 128, 256)
DEMO_FPN_STAGES = (2, 3, 4)  # layerN of the trunk that feed the FPN
DEMO_ANCHOR_SIZES = (32, 64, 128, 256)  # one per feature map (FPN stages, then the pooled one)
DEMO_CHANNELS = 64
DEMO_BOX_REPRESENTATION = 256
DEMO_MASK_LAYERS = 2


def _demo_trunk(widths: Sequence[int]) -> Any:
    """ResNet-style trunk: conv1/bn1/relu/maxpool stem (stride 4), then layer1..layer4 of one
    BasicBlock each (strides 4, 8, 16, 32). Images [B, 3, H, W] -> layerN [B, widths[N-1], ...]."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    trunk = nn.Sequential()
    trunk.add_module("conv1", nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False))
    trunk.add_module("bn1", nn.BatchNorm2d(widths[0]))
    trunk.add_module("relu", nn.ReLU(inplace=True))
    trunk.add_module("maxpool", nn.MaxPool2d(3, stride=2, padding=1))
    cin = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or cin != width:
            downsample = nn.Sequential(
                nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        trunk.add_module(f"layer{i + 1}", BasicBlock(cin, width, stride, downsample))
        cin = width
    return trunk


def _build_demo(spec: ModelSpec) -> Any:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    channels = DEMO_CHANNELS
    # Trained from scratch, so its batch norms learn (torchvision freezes them only because its
    # backbones start from ImageNet statistics).
    backbone = BackboneWithFPN(
        _demo_trunk(DEMO_TRUNK_WIDTHS),
        return_layers={f"layer{n}": str(k) for k, n in enumerate(DEMO_FPN_STAGES)},
        in_channels_list=[DEMO_TRUNK_WIDTHS[n - 1] for n in DEMO_FPN_STAGES],
        out_channels=channels,
    )
    maps = [str(k) for k in range(len(DEMO_FPN_STAGES))]  # the pooled map is not RoI-pooled
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(
            tuple((size,) for size in DEMO_ANCHOR_SIZES),
            ((0.5, 1.0, 2.0),) * len(DEMO_ANCHOR_SIZES),
        ),
        box_roi_pool=MultiScaleRoIAlign(maps, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, DEMO_BOX_REPRESENTATION),
        box_predictor=FastRCNNPredictor(DEMO_BOX_REPRESENTATION, spec.num_classes),
        mask_roi_pool=MultiScaleRoIAlign(maps, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [channels] * DEMO_MASK_LAYERS, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, spec.num_classes),
        **_torchvision_kwargs(spec),
    )


def import_factory(name: str) -> Callable[..., Any]:
    """The user's model builder named 'package.module:function'; one-line SpecError if absent."""
    if not _is_factory_name(name):
        raise SpecError(f"model factory must be 'package.module:function', got {name!r}")
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"cannot import the model factory's module {module_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"module {module_name!r} has no {attr!r} (model factory {name})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"model factory {name} is not callable")
    return obj  # type: ignore[no-any-return]


def parse_factory_args(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> keyword arguments; values are JSON when they parse as JSON
    (``num_classes=5``, ``sizes=[32,64]``, ``flag=true``), else strings."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"factory argument must be key=value, got {item!r}")
        try:
            args[key] = json.loads(text)
        except ValueError:
            args[key] = text
    return args


def build_model(spec: ModelSpec, allow_factory: bool = False) -> Any:
    """A freshly initialised ``torch.nn.Module`` for ``spec``, in eval mode, no downloads.

    A spec whose model came from the user's own factory is rebuilt by importing and calling it
    (with ``factory_args``) only when ``allow_factory`` is true: importing user code must be
    asked for. A hand-assembled model (``arch`` "custom", no factory) cannot be rebuilt.
    """
    import torchvision.models.detection as tvd

    if spec.factory is not None:
        if not allow_factory:
            raise SpecError(
                f"the model is built by user code ({spec.factory}); maskrt imports it only "
                f"when asked: pass --model-factory {spec.factory}"
            )
        try:
            model = import_factory(spec.factory)(**spec.factory_args)
        except SpecError:
            raise
        except Exception as e:  # the user's code may raise anything
            raise SpecError(
                f"model factory {spec.factory} failed: {type(e).__name__}: {e}"
            ) from None
    elif spec.arch == CUSTOM_ARCH:
        raise SpecError(
            "this model was assembled in Python, not by a named builder: rebuild it with your "
            "code, or record a factory (--model-factory package.module:function)"
        )
    elif spec.arch == DEMO_ARCH:
        model = _build_demo(spec)
    elif spec.arch == LEGACY_DEMO_ARCH:
        model = _build_legacy_demo(spec)
    else:
        builder = getattr(tvd, spec.arch)
        kwargs = _torchvision_kwargs(spec)
        if spec.has_keypoints:
            kwargs["num_keypoints"] = spec.num_keypoints
        if spec.fixed_size is not None:
            kwargs["fixed_size"] = spec.fixed_size
        model = builder(weights=None, weights_backbone=None, num_classes=spec.num_classes, **kwargs)
    if not hasattr(model, "eval") or not hasattr(model, "roi_heads"):
        raise SpecError(f"{spec.name} did not return a torchvision detector module")
    return model.eval()
