"""maskrt.specs and the input contract: every architecture rebuilds from its spec, and the sizes
a spec promises are the ones torchvision's transform produces.

Oracle: torchvision's ``GeneralizedRCNNTransform`` (resize, then batching padded to 32).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrt import contract
from maskrt.specs import ARCHS, ModelSpec, SpecError, build_model, default_spec, demo_spec


def test_spec_validation_and_json_round_trip() -> None:
    for arch in ARCHS:
        spec = default_spec(arch)
        assert ModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SpecError, match="unknown architecture"):
        ModelSpec(arch="yolo")
    with pytest.raises(SpecError, match="category names"):
        demo_spec().replace(category_names=("a",))
    with pytest.raises(SpecError, match="unknown model spec fields"):
        ModelSpec.from_dict({"arch": "demo_maskrcnn", "colour": 1})


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_with_its_thresholds(arch: str) -> None:
    spec = default_spec(
        arch, box_score_thresh=0.25, box_detections_per_img=17, rpn_post_nms_top_n_test=99
    )
    model = build_model(spec)
    assert model.roi_heads.score_thresh == 0.25
    assert model.roi_heads.detections_per_img == 17
    assert model.rpn._post_nms_top_n["testing"] == 99
    assert (model.roi_heads.mask_head is not None) == spec.has_masks
    assert (model.roi_heads.keypoint_head is not None) == spec.has_keypoints


def _transform(spec: ModelSpec) -> GeneralizedRCNNTransform:
    return GeneralizedRCNNTransform(
        spec.min_size,
        spec.max_size,
        list(spec.image_mean),
        list(spec.image_std),
        size_divisible=contract.SIZE_DIVISIBLE,
        fixed_size=spec.fixed_size,
    )


@pytest.mark.parametrize(
    "spec",
    [
        default_spec("maskrcnn_resnet50_fpn", min_size=320, max_size=512),
        default_spec("maskrcnn_resnet50_fpn", fixed_size=(300, 200)),  # (width, height)
    ],
    ids=["min-max", "fixed"],
)
def test_sizes_match_torchvision_transform(spec: ModelSpec) -> None:
    """resized_size per image, batch_canvas for a batch, canvas_size bounding every batch."""
    t = _transform(spec).eval()
    shapes = [(100, 300), (480, 640), (1000, 200), (333, 333), (37, 900)]
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) for h, w in shapes]
    batch, _ = t(images)
    resized = [spec.resized_size(h, w) for h, w in shapes]
    assert resized == [tuple(s) for s in batch.image_sizes]
    canvas = contract.batch_canvas(resized)
    assert canvas == tuple(batch.tensors.shape[-2:])
    top = spec.canvas_size()
    assert all(h <= top[0] and w <= top[1] for h, w in [canvas, *resized])
    assert all(v % contract.SIZE_DIVISIBLE == 0 for v in top)
    if spec.fixed_size is not None:  # every image is resized to exactly the fixed size
        assert top == canvas == (contract.round_to_divisible(200), contract.round_to_divisible(300))
