"""The Predictor API: torch reference backend and the ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _runtime_fakes import fake_deploy_graph
from onnx.reference import ReferenceEvaluator

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.runtime import load_predictor
from maskrt.runtime.backends.torch_backend import to_tensor
from maskrt.runtime.postprocess import postprocess
from maskrt.runtime.predictor import default_backend, filter_by_score
from maskrt.runtime.preprocess import preprocess
from maskrt.specs import demo_spec


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in ((96, 128, 3), (150, 100, 3))]


def test_torch_predictor_equals_the_model(random_demo_checkpoint: Path) -> None:
    predictor = load_predictor(random_demo_checkpoint)
    assert predictor.backend == "torch" and predictor.spec.arch == demo_spec().arch
    images = _images()
    dets = predictor.predict(images)
    with torch.inference_mode():
        ref = predictor.model([to_tensor(im) for im in images])  # type: ignore[attr-defined]
    assert len(dets) == 2
    assert sum(len(d) for d in dets) > 0
    for d, r, im in zip(dets, ref, images):
        np.testing.assert_array_equal(d.boxes, r["boxes"].numpy())
        np.testing.assert_array_equal(d.scores, r["scores"].numpy())
        np.testing.assert_array_equal(d.labels, r["labels"].numpy())
        assert d.masks is not None and d.masks.dtype == bool
        assert d.masks.shape == (len(d), *im.shape[:2])
        np.testing.assert_array_equal(d.masks, (r["masks"][:, 0] > 0.5).numpy())
    # predict_paths reads files and batches them; same answers.
    from PIL import Image

    folder = random_demo_checkpoint.parent
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"im{i}.png")
        Image.fromarray(im).save(paths[-1])
    again = list(predictor.predict_paths(paths, batch_size=2))
    for a, b in zip(again, dets):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    high = filter_by_score(dets[0], float(np.median(dets[0].scores)))
    assert 0 < len(high) < len(dets[0]) + 1 and np.all(high.scores >= np.median(dets[0].scores))


def test_backend_from_suffix() -> None:
    assert default_backend("a.pt") == "torch"
    assert default_backend("a.onnx") == "onnxruntime"
    assert default_backend("a.engine") == "tensorrt"
    with pytest.raises(MaskrtError, match="--backend"):
        default_backend("a.bin")


def test_onnxruntime_backend_on_a_contract_graph(tmp_path: Path) -> None:
    spec = demo_spec().replace(box_detections_per_img=6)
    model = fake_deploy_graph(spec)
    path = tmp_path / "fake.onnx"
    onnx.save(model, path)
    predictor = load_predictor(path)
    assert predictor.backend == "onnxruntime" and predictor.spec == spec
    images = _images(1)
    dets = predictor.predict(images)
    # Oracle: the ONNX reference evaluator on the same inputs, then postprocess.
    batch = preprocess(images, spec)
    ref = ReferenceEvaluator(model).run(
        None, {contract.INPUT_IMAGES: batch.images, contract.INPUT_IMAGE_SIZES: batch.image_sizes}
    )
    outputs = dict(zip(contract.output_names(True, False), ref))
    expected = postprocess(outputs, batch)
    for d, e, im, size in zip(dets, expected, images, batch.image_sizes):
        assert len(d) == len(e) == min(6, int(size[0]) // 16)
        # measured 0 (ORT 1.31.1 and 1.32.0): the same graph through ORT and onnx's reference
        # evaluator
        np.testing.assert_allclose(d.boxes, e.boxes, rtol=1e-6)
        np.testing.assert_array_equal(d.masks, e.masks)
        np.testing.assert_array_equal(d.labels, e.labels)
        assert d.masks is not None and d.masks.shape[1:] == im.shape[:2]
        # Boxes come back in original pixels: fractions of the original size.
        h, w = im.shape[:2]
        frac = d.boxes / np.array([w, h, w, h], np.float32)
        # measured 3.8e-8 relative (float32 division vs float64), ORT 1.31.1 and 1.32.0
        np.testing.assert_allclose(frac, d.boxes / np.array([w, h, w, h]), rtol=1e-5)
        assert np.all(d.boxes[:, 2] <= w + 1e-3) and np.all(d.boxes[:, 3] <= h + 1e-3)


def test_onnxruntime_backend_refuses_foreign_graphs(tmp_path: Path) -> None:
    spec = demo_spec().replace(box_detections_per_img=4)
    model = fake_deploy_graph(spec)
    del model.metadata_props[:]
    path = tmp_path / "plain.onnx"
    onnx.save(model, path)
    with pytest.raises(MaskrtError, match="not a maskrt deploy graph"):
        load_predictor(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(MaskrtError):
        load_predictor(tmp_path / "junk.onnx")
    with pytest.raises(MaskrtError, match="does not exist"):
        load_predictor(tmp_path / "missing.onnx")
    onnx.save(fake_deploy_graph(spec), tmp_path / "good.onnx")
    with pytest.raises(MaskrtError, match="optimization level 'fast'"):
        load_predictor(tmp_path / "good.onnx", optimization="fast")


def test_tensorrt_backend_without_tensorrt(tmp_path: Path) -> None:
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):  # not just the stubs' namespace package
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(MaskrtError, match="TensorRT is not installed"):
        load_predictor(engine)
