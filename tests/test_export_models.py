"""Any torchvision two-stage detector: torchvision's edge builders, other backbones, a single
feature map, the user's own assembly; export read off the module, checked against torchvision.

Each family is a random-weight model at small sizes with the score thresholds at 0 (random
weights score every class alike, and at 0 every proposal yields detections to compare). The
oracle is torchvision's eager model on the same uint8 images (its own resize and mask pasting);
detections pair by label and position (validate's rule), not by rank, because random weights
tie scores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.models.detection as tvd
from _roialign_cases import FP32_TOL
from torchvision.models import mobilenet_v3_small
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import MultiScaleRoIAlign

from maskrt.checkpoint import load_checkpoint, save_checkpoint
from maskrt.detections import Detections
from maskrt.errors import MaskrtError
from maskrt.export import export_onnx
from maskrt.introspect import UnsupportedModelError, spec_from_module
from maskrt.onnxio import read_spec
from maskrt.plugins.contract import PLUGIN_NAME, MultiLevelRoIAlignFields
from maskrt.plugins.surgery import surgery
from maskrt.runtime import load_predictor
from maskrt.runtime.backends.torch_backend import from_torchvision, to_tensor
from maskrt.specs import ModelSpec, SpecError, default_spec

# Small inputs, few proposals, every class kept: CI time, and detections on random weights.
SMALL = dict(
    min_size=160,
    max_size=224,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    box_score_thresh=0.0,
    box_detections_per_img=30,
)


def _mobilenet_320() -> Any:
    return tvd.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, **SMALL, rpn_score_thresh=0.0
    )


def _mobilenet_fpn() -> Any:
    return tvd.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=7, **SMALL
    )


def _maskrcnn_resnet18_three_levels() -> Any:
    """ResNet-18 FPN on C3..C5 (feature maps at strides 8..64), 4-level pooling from level 3,
    a 5-px adaptive box pooler and a 10-px mask pooler (20-px masks)."""
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4]
    )
    names = ["0", "1", "2"]
    return tvd.MaskRCNN(
        backbone,
        num_classes=4,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(names, 5, sampling_ratio=0, canonical_level=3),
        mask_roi_pool=MultiScaleRoIAlign(names, 10, sampling_ratio=2, canonical_scale=112),
        **SMALL,
    )


def _maskrcnn_mobilenet_fixed_size() -> Any:
    """MobileNet-V3-small FPN Mask R-CNN with torchvision's fixed_size resize (width, height)."""
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_small", weights=None, fpn=True, trainable_layers=6
    )
    kwargs = dict(SMALL, fixed_size=(224, 160))
    return tvd.MaskRCNN(
        backbone,
        num_classes=3,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128),) * 3, ((0.5, 1.0, 2.0),) * 3),
        **kwargs,
    )


def _fasterrcnn_single_map() -> Any:
    """torchvision's documented recipe: a plain feature extractor, one map, one pooled level."""
    backbone = mobilenet_v3_small(weights=None).features
    backbone.out_channels = 576
    return tvd.FasterRCNN(
        backbone,
        num_classes=4,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, sampling_ratio=2),
        **SMALL,
    )


def _keypointrcnn_resnet18() -> Any:
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return tvd.KeypointRCNN(backbone, num_classes=2, num_keypoints=5, **SMALL)


FAMILIES: dict[str, Callable[[], Any]] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": _mobilenet_320,
    "fasterrcnn_mobilenet_v3_large_fpn": _mobilenet_fpn,
    "maskrcnn_resnet18_fpn_3_levels": _maskrcnn_resnet18_three_levels,
    "maskrcnn_mobilenet_v3_fpn_fixed_size": _maskrcnn_mobilenet_fixed_size,
    "fasterrcnn_single_feature_map": _fasterrcnn_single_map,
    "keypointrcnn_resnet18_fpn": _keypointrcnn_resnet18,
}
MIN_DETECTIONS = 20


def _model(family: str) -> Any:
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in ((120, 170, 3), (200, 140, 3))]


def _assert_same(ours: Detections, ref: Detections, model: Any) -> int:
    """The export check's rule (paired at the same position; on one side only where a near-tie
    decides), on end-to-end detections; paired boxes and scores close, pasted masks equal but
    for rounding flips at edges."""
    from maskrt.export.check import StageComparison, box_head_decisions
    from maskrt.export.ties import Ranked

    lists = [
        (Ranked(ref.boxes, ref.scores, ref.labels), Ranked(ours.boxes, ours.scores, ours.labels))
    ]
    stage = StageComparison("detections", "label", lists, [box_head_decisions(model)])
    stage.decide()  # raises on a difference that no near-tie explains
    for a, b in stage.pairs[0]:
        np.testing.assert_allclose(ours.boxes[b], ref.boxes[a], atol=2e-2)
        assert abs(float(ours.scores[b]) - float(ref.scores[a])) < 1e-4
        if ref.masks is not None:
            assert ours.masks is not None
            assert (ours.masks[b] != ref.masks[a]).mean() < 1e-3
        if ref.keypoints is not None:
            assert ours.keypoints is not None
            np.testing.assert_allclose(ours.keypoints[b, :, :2], ref.keypoints[a, :, :2], atol=0.1)
    return len(stage.pairs[0])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    model = _model(family)
    path = tmp_path_factory.mktemp(family) / "model.onnx"
    summary = export_onnx(model, path, progress=False)
    return family, model, path, summary


def test_export_reads_the_module_and_checks_it(exported) -> None:
    family, model, path, summary = exported
    spec = read_spec(path)
    assert spec == spec_from_module(model)
    assert summary.check is not None and not summary.check.thresholds_zeroed
    assert summary.check.paired >= MIN_DETECTIONS
    heads = model.roi_heads
    assert spec.num_classes == heads.box_predictor.cls_score.out_features
    assert spec.has_masks == heads.has_mask() and spec.has_keypoints == heads.has_keypoint()
    assert spec.min_size == model.transform.min_size[-1]
    assert spec.max_size == model.transform.max_size
    fixed = model.transform.fixed_size
    assert spec.fixed_size == (None if fixed is None else tuple(fixed))
    # One unit per RoI head, pooling exactly the feature maps torchvision's pooler consumes.
    features = spec.structure["feature_maps"]
    for unit in summary.units:
        fields = MultiLevelRoIAlignFields(**unit)
        assert len(fields.spatial_scales) <= len(features)
    box = spec.structure["poolers"]["box"]
    assert box["featmap_names"] == [n for n in features if n in heads.box_roi_pool.featmap_names]


def test_onnxruntime_matches_torchvision_eager(exported) -> None:
    family, model, path, _ = exported
    images = _images()
    with torch.inference_mode():
        reference = [from_torchvision(o) for o in model([to_tensor(im) for im in images])]
    ours = load_predictor(path).predict(images)
    paired = sum(_assert_same(o, r, model) for o, r in zip(ours, reference))
    assert paired >= MIN_DETECTIONS


def _run(graph: onnx.ModelProto, feeds: dict[str, np.ndarray], plugin: bool) -> list[np.ndarray]:
    from maskrt.plugins.ort import ort_session

    if plugin:
        return ort_session(graph).run(None, feeds)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_surgery_replaces_every_unit_and_keeps_the_outputs(exported) -> None:
    from maskrt.runtime.preprocess import preprocess

    family, model, path, summary = exported
    graph = onnx.load(path)
    out, report = surgery(graph)
    assert report.units == len(summary.units) and not report.unrecognised
    plugins = [n for n in out.graph.node if n.op_type == PLUGIN_NAME]
    assert len(plugins) == len(summary.units)
    batch = preprocess(_images(), read_spec(path))
    feeds = {"images": batch.images, "image_sizes": batch.image_sizes}
    want, got = _run(graph, feeds, plugin=False), _run(out, feeds, plugin=True)
    assert int(want[0].sum()) >= MIN_DETECTIONS
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)


@pytest.mark.parametrize(
    "family", ["fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet18_fpn_3_levels"]
)
def test_fp16_and_int8_graphs(family: str, tmp_path: Path, shapes_dataset: Path) -> None:
    """Reduced precision on other backbones: the whole convolutional trunk goes to FP16
    (MobileNet's HardSwish/HardSigmoid included) and to INT8, the graphs run in ONNX Runtime,
    and FP16 computes what FP32 does. Random weights score many candidates alike, so FP16
    rounding reorders near-ties and pairing detections says little; the k-th best score moves no
    more than the scores do, so the sorted score lists are compared instead."""
    from maskrt.calibration import calibrate_fp16, quantize_to_int8

    model = _model(family)
    fp32, fp16, int8 = (tmp_path / f"model.{p}.onnx" for p in ("fp32", "fp16", "int8"))
    export_onnx(model, fp32, progress=False, check=False)  # checked by the tests above
    summary = calibrate_fp16(fp32, fp16)
    convs = sum(n.op_type == "Conv" for n in onnx.load(fp32).graph.node)
    assert summary.fp16_nodes > convs
    quantized = quantize_to_int8(fp32, int8, shapes_dataset / "train", max_images=4)
    assert quantized.quantized_nodes >= convs
    images = _images()
    reference = load_predictor(fp32).predict(images)
    k = model.roi_heads.detections_per_img
    for graph in (fp16, int8):
        assert all(len(d) for d in load_predictor(graph).predict(images))
    half = load_predictor(fp16).predict(images)
    assert sum(len(r) for r in reference) >= MIN_DETECTIONS
    for r, h in zip(reference, half):
        assert len(h) == len(r) == k
        np.testing.assert_allclose(np.sort(h.scores), np.sort(r.scores), atol=5e-3)


def test_builder_defaults_are_torchvisions() -> None:
    """default_spec's table of builder defaults equals what each builder makes."""
    for arch in ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"):
        built = getattr(tvd, arch)(weights=None, weights_backbone=None)
        assert spec_from_module(built, arch=arch).replace(structure={}) == default_spec(arch)


# ------------------------------------------------------------------ refusals


def _refused(model: Any, tmp_path: Path, *words: str) -> None:
    path = tmp_path / "refused.onnx"
    with pytest.raises(UnsupportedModelError) as err:
        export_onnx(model, path, progress=False)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not path.exists() and not list(tmp_path.iterdir())


def test_custom_roi_heads_refused(tmp_path: Path) -> None:
    model = _model("fasterrcnn_single_feature_map")

    class MyHeads(type(model.roi_heads)):  # type: ignore[misc]
        pass

    model.roi_heads.__class__ = MyHeads
    _refused(model, tmp_path, "roi_heads", "MyHeads")


def test_pooler_on_missing_feature_maps_refused(tmp_path: Path) -> None:
    model = _model("fasterrcnn_single_feature_map")
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["p3", "p4"], 7, 2)
    _refused(model, tmp_path, "box_roi_pool", "['p3', 'p4']", "['0']")


def test_non_square_pooler_refused(tmp_path: Path) -> None:
    model = _model("fasterrcnn_single_feature_map")
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0"], (7, 5), 2)
    _refused(model, tmp_path, "non-square", "(7, 5)")


def test_other_padding_refused(tmp_path: Path) -> None:
    model = _model("fasterrcnn_single_feature_map")
    model.transform.size_divisible = 64
    _refused(model, tmp_path, "transform", "64")


def test_not_a_two_stage_detector_refused(tmp_path: Path) -> None:
    retina = tvd.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    _refused(retina.eval(), tmp_path, "RetinaNet")


# ------------------------------------------------------------------ spec versions


def test_spec_version_newer_major_refused_newer_minor_read() -> None:
    spec = default_spec("demo_maskrcnn").to_dict()
    newer_minor = dict(spec, spec_version="1.9", colour="red")
    assert ModelSpec.from_dict(newer_minor).num_classes == spec["num_classes"]
    with pytest.raises(SpecError, match="newer than this maskrt reads"):
        ModelSpec.from_dict(dict(spec, spec_version="2.0"))
    with pytest.raises(SpecError, match="unknown model spec fields: colour"):
        ModelSpec.from_dict(dict(spec, colour="red"))  # same version: a typo, refused
    old = {k: v for k, v in spec.items() if k not in ("spec_version", "mask_head")}
    assert ModelSpec.from_dict(old).has_masks  # version 1.0 files: heads from the arch name


# ------------------------------------------------------------------ factories and the CLI

FACTORY_MODULE = """
import torch
import torchvision.models.detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign


def tiny_detector(num_classes=3, anchor=32):
    # Two strided convolutions: a backbone of one feature map at stride 16.
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=4, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=4, padding=1),
    )
    backbone.out_channels = 32
    return tvd.FasterRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=AnchorGenerator(((anchor, 2 * anchor),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, sampling_ratio=2),
        min_size=128,
        max_size=160,
        box_score_thresh=0.0,
        box_detections_per_img=20,
    )
"""


def _maskrt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``maskrt`` command, with ``cwd`` importable (where the user's code is)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("maskrt")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )


def test_model_factory_cli(tmp_path: Path) -> None:
    (tmp_path / "user_models.py").write_text(textwrap.dedent(FACTORY_MODULE))
    sys.path.insert(0, str(tmp_path))
    try:
        import user_models  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = user_models.tiny_detector(num_classes=5, anchor=16).eval()
    plain = tmp_path / "weights.pt"
    torch.save(model.state_dict(), plain)

    graph = tmp_path / "model.onnx"
    args = ["--model-factory", "user_models:tiny_detector", "--factory-arg", "num_classes=5"]
    args += ["--factory-arg", "anchor=16"]
    done = _maskrt("export", str(plain), "-o", str(graph), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "checked against torchvision eager" in done.stdout
    spec = read_spec(graph)
    assert spec.factory == "user_models:tiny_detector"
    assert spec.factory_args == {"num_classes": 5, "anchor": 16}
    assert spec.num_classes == 5 and spec.structure["anchor_sizes"] == [[16, 32]]

    # A maskrt checkpoint records the factory; it is not imported from without the flag.
    ckpt = tmp_path / "model.pt"
    spec, loaded = load_checkpoint(plain, factory="user_models:tiny_detector",
                                   factory_args={"num_classes": 5, "anchor": 16})  # fmt: skip
    save_checkpoint(ckpt, spec, loaded)
    refused = _maskrt("export", str(ckpt), "-o", str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--model-factory user_models:tiny_detector" in refused.stderr
    assert not (tmp_path / "x.onnx").exists()
    done = _maskrt("export", str(ckpt), "-o", str(tmp_path / "y.onnx"),
                   "--model-factory", "user_models:tiny_detector", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_spec(tmp_path / "y.onnx").factory_args == {"num_classes": 5, "anchor": 16}

    missing = _maskrt("export", str(plain), "-o", str(tmp_path / "z.onnx"),
                      "--model-factory", "no_such_module:f", cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "no_such_module" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_hand_assembled_checkpoint_says_how_to_export(tmp_path: Path) -> None:
    model = _model("fasterrcnn_single_feature_map")
    ckpt = save_checkpoint(tmp_path / "mine.pt", None, model)
    with pytest.raises(MaskrtError, match="assembled in Python"):
        load_checkpoint(ckpt)


def test_validate_and_infer_a_factory_model(
    tmp_path: Path, heldout_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`maskrt validate --model-factory` end to end on a random-weight model of the user's own
    builder: every artifact made and scored; detection-level parity (AP is ~0 on random weights
    and proves nothing), then `maskrt infer` on the surgered graph."""
    from click.testing import CliRunner

    from maskrt.pipeline.main import main

    (tmp_path / "user_models.py").write_text(textwrap.dedent(FACTORY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_models  # type: ignore[import-not-found]

    torch.manual_seed(1)
    plain = tmp_path / "weights.pt"
    torch.save(user_models.tiny_detector().state_dict(), plain)
    out = tmp_path / "validation"
    result = CliRunner().invoke(
        main,
        ["validate", str(plain), "--data", str(heldout_dataset), "-o", str(out), "--limit", "8",
         "--calib-images", "8", "--model-factory", "user_models:tiny_detector"],
    )  # fmt: skip
    table = __import__("json").loads((out / "validation.json").read_text())
    rows = {r["name"]: r for r in table["rows"]}
    for name in ("ONNX FP32", "ONNX FP32 surgered", "ONNX FP16", "ONNX INT8 (entropy)"):
        assert rows[name]["ap"], f"{name}: {rows[name]['note']}"
    assert rows["ONNX FP32"]["matched"] == 1.0 and rows["ONNX FP32 surgered"]["matched"] == 1.0
    assert rows["ONNX FP16"]["matched"] > 0.9
    assert result.exit_code in (0, 1), result.output  # AP deltas on random weights: no gate

    surgered = out / "model.fp32.trt.onnx"
    assert read_spec(surgered).factory == "user_models:tiny_detector"
    image = sorted((heldout_dataset / "val").glob("*.png"))[0]
    done = CliRunner().invoke(main, ["infer", str(surgered), str(image), "-o", str(tmp_path / "i")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "i").is_dir() and any((tmp_path / "i").iterdir())
