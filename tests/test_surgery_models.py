"""Graph surgery on whole detectors: outputs unchanged in ONNX Runtime (<= 1e-5).

* the trained demo model exported by ``maskrt export``, over held-out shapes images;
* a vanilla torchvision Mask R-CNN (random weights) exported by plain ``torch.onnx.export``,
  whose per-level RoiAlign pattern is fused into one plugin node per RoI head; a tiny one at
  every opset from 11 to 20.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _roialign_cases import FP32_TOL

from maskrt.onnxio import IR_VERSION
from maskrt.plugins.contract import (
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    UNIT_DOMAIN,
    MultiLevelRoIAlignFields,
)
from maskrt.plugins.surgery import surgery

pytestmark = pytest.mark.slow


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], plugin: bool) -> list[np.ndarray]:
    if plugin:
        from maskrt.plugins.ort import ort_session

        return ort_session(model).run(None, feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_demo_model_outputs_unchanged_on_heldout_images(
    demo_checkpoint: Path, shapes_dataset: Path
) -> None:
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export.exporter import build_onnx
    from maskrt.runtime.images import read_image
    from maskrt.runtime.preprocess import preprocess

    spec, model = load_checkpoint(demo_checkpoint)
    exported = build_onnx(model, spec=spec)
    out, report = surgery(exported)
    assert report.units == 2 and not report.unrecognised
    assert not any(n.op_type == "RoiAlign" or n.domain == UNIT_DOMAIN for n in out.graph.node)

    paths = sorted((shapes_dataset / "val").glob("*.png"))[:6]
    assert len(paths) == 6
    detections = 0
    for i in range(0, len(paths), 2):
        batch = preprocess([read_image(p) for p in paths[i : i + 2]], spec)
        feeds = {"images": batch.images, "image_sizes": batch.image_sizes}
        want = _run(exported, feeds, plugin=False)
        got = _run(out, feeds, plugin=True)
        detections += int(want[0].sum())
        for w, g in zip(want, got):
            assert w.shape == g.shape and w.dtype == g.dtype
            np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)
    assert detections > 0


def _torchvision_export(path: Path) -> np.ndarray:
    """maskrcnn_resnet50_fpn with random weights via plain torch.onnx.export (opset 17);
    returns the example image it was traced with."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=320,
        max_size=480,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=200,
        box_score_thresh=0.0,  # random weights score low: keep detections so masks are pooled
        box_detections_per_img=20,
    ).eval()
    image = torch.rand(3, 320, 480)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values
        torch.onnx.export(
            model,
            ([image],),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            output_names=["boxes", "labels", "scores", "masks"],
        )
    return image.numpy()


def test_torchvision_export_fused_and_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "maskrcnn.onnx"
    image = _torchvision_export(path)
    exported = onnx.load(path)
    exported.ir_version = min(exported.ir_version, IR_VERSION)
    out, report = surgery(exported)

    assert report.torchvision_units == 2 and report.replaced == 2 and not report.unrecognised
    ops = [n.op_type for n in out.graph.node]
    assert "RoiAlign" not in ops and "ScatterElements" not in ops
    plugins = [n for n in out.graph.node if n.op_type == PLUGIN_NAME]
    assert len(plugins) == 2 and all(n.domain == PLUGIN_DOMAIN for n in plugins)
    fields = sorted(
        (
            MultiLevelRoIAlignFields.from_onnx_attributes(
                {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            )
            for n in plugins
        ),
        key=lambda f: f.output_size,
    )
    scales = (0.25, 0.125, 0.0625, 0.03125)
    assert fields == [
        MultiLevelRoIAlignFields(7, 2, 0, scales, 224, 4),
        MultiLevelRoIAlignFields(14, 2, 0, scales, 224, 4),
    ]
    assert [str(v) for v in out.graph.output] == [str(v) for v in exported.graph.output]
    onnx.checker.check_model(out)

    rng = np.random.default_rng(0)
    for x in (image, rng.random(image.shape, dtype=np.float32)):
        want = _run(exported, {"image": x}, plugin=False)
        got = _run(out, {"image": x}, plugin=True)
        assert want[0].shape[0] > 0
        for w, g in zip(want, got):
            assert w.shape == g.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)

    again, report = surgery(out)
    assert report.already_surgered and again.SerializeToString() == out.SerializeToString()


# ----------------------------------------------------------------------------------------------
# every opset a vanilla export may come in: Unsqueeze/Squeeze take `axes` as an attribute
# before opset 13, as an input from 13 on


@pytest.fixture(scope="module")
def tiny_vanilla_maskrcnn() -> tuple[Any, Any]:
    """The demo architecture (random weights, 96x128 images, few proposals) and an image: a
    whole torchvision Mask R-CNN that exports in about two seconds."""
    import torch

    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    spec = demo_spec().replace(
        min_size=96,
        max_size=128,
        box_score_thresh=0.0,  # random weights score low: keep detections so masks are pooled
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=10,
    )
    return build_model(spec), torch.rand(3, 96, 128)


@pytest.mark.parametrize("opset", range(11, 21))
def test_vanilla_export_at_every_opset_survives_surgery(
    tiny_vanilla_maskrcnn: tuple[Any, Any], opset: int
) -> None:
    import io

    import torch

    model, image = tiny_vanilla_maskrcnn
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values
        torch.onnx.export(
            model,
            ([image],),
            buf,
            opset_version=opset,
            dynamo=False,
            input_names=["image"],
            output_names=["boxes", "labels", "scores", "masks"],
        )
    exported = onnx.load_from_string(buf.getvalue())
    exported.ir_version = min(exported.ir_version, IR_VERSION)
    assert exported.opset_import[0].version == opset

    out, report = surgery(exported)
    assert report.torchvision_units == 2 and report.replaced == 2 and not report.unrecognised
    onnx.checker.check_model(out, full_check=True)
    assert "RoiAlign" not in {n.op_type for n in out.graph.node}

    feeds = {"image": image.numpy()}
    want = _run(exported, feeds, plugin=False)
    got = _run(out, feeds, plugin=True)
    assert want[0].shape[0] > 0 and len(want) == len(got) == 4
    for w, g in zip(want, got):
        assert w.shape == g.shape and w.dtype == g.dtype
        np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)
