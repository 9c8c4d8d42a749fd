"""maskrt.calibration.int8 and .cache: Q/DQ placement, the calibration cache, and surgery on
an INT8 graph.

Oracles: the ONNX checker, ONNX Runtime runs the graph before and after surgery, and the Q/DQ
structure is read from the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _calibration_graphs import PREDICTION_WEIGHTS, copy_images, producers, run_ort
from onnx import numpy_helper

from maskrt import contract
from maskrt.calibration import quantize_to_int8


@pytest.mark.slow
def test_int8_qdq_placement_cache_and_surgery(
    random_demo_deploy_graph: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    images = copy_images(shapes_dataset / "train", tmp_path / "calib", 3)
    (images / "zz_broken.png").write_bytes(b"not a png")
    out, cache = tmp_path / "model.int8.onnx", tmp_path / "calib.json"
    summary = quantize_to_int8(random_demo_deploy_graph, out, images, method="minmax", cache=cache)
    assert (summary.num_images, summary.skipped) == (3, 1)
    assert cache.is_file()

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = producers(model)
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            readers[n.op_type] = readers.get(n.op_type, 0) + 1
            scale, zero = inits[dq.input[1]], inits[dq.input[2]]
            assert zero.dtype == np.int8 and not zero.any()  # symmetric INT8
            if dq.input[0] in inits:  # a weight: per output channel
                axis = 1 if n.op_type == "ConvTranspose" else 0
                assert scale.shape == (inits[dq.input[0]].shape[axis],)
            else:  # an activation: per tensor
                assert scale.shape == ()
    assert set(readers) <= {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}
    # fc6 and fc7 of the box head; the box predictor's two Gemms stay float
    # weight and input of each of the demo's 24 hidden Convs: trunk 12, FPN 6, the RPN's shared
    # conv once per feature map 4, mask head 2
    assert readers["Conv"] == 2 * 24 and readers["Gemm"] == 2 * 2
    for n in model.graph.node:
        if any(w in n.input for w in PREDICTION_WEIGHTS):
            sources = [prod[t].op_type for t in n.input if t in prod]
            assert "DequantizeLinear" not in sources, n.name
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.META_PRECISION] == "int8"

    # ORT runs it, and after surgery too
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 128]], np.int32)}
    assert run_ort(model, feeds)[1].shape == (1, 50, 4)
    surgery = pytest.importorskip("maskrt.plugins.surgery")
    surgered, report = surgery.surgery(model)
    assert report.replaced == 2
    from maskrt.plugins import ort_session

    assert ort_session(surgered).run(None, feeds)[1].shape == (1, 50, 4)

    # the cache is reused with the same key...
    again = quantize_to_int8(
        random_demo_deploy_graph, out, images, method="minmax", cache=cache, force=True
    )
    assert "from cache" in again.cache_note
    # ...and found stale (then rewritten) when the images change
    (images / sorted(images.glob("*.png"))[0].name).unlink()
    stale = quantize_to_int8(
        random_demo_deploy_graph, out, images, method="minmax", cache=cache, force=True
    )
    assert "stale" in stale.cache_note and "images changed" in stale.cache_note
