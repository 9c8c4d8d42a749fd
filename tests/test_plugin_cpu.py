"""The CPU RoIAlign library against torchvision (multi-level) and ONNX (single-level)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _roialign_cases import (
    BOX_KINDS,
    FP32_TOL,
    make_boxes,
    make_features,
    torchvision_multilevel,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align

from maskrt.errors import MaskrtError
from maskrt.plugins import (
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
    multilevel_roi_align,
    roi_align_single,
)

# Box kinds of _roialign_cases that may span more than their feature map: with adaptive sampling
# they sample a grid capped at floor(map / P) + 2 per bin side, not torchvision's ceil(roi / P).
BEYOND_THE_MAP = ("huge", "boundary")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def multilevel_cases(draw: st.DrawFn) -> dict:
    k0 = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(1, 4))
    aligned = draw(st.booleans())
    sampling_ratio = draw(st.sampled_from([-1, 0, 1, 2, 3]))
    kinds: tuple[str, ...] = BOX_KINDS
    if sampling_ratio <= 0:
        # boxes larger than their feature map sample a capped grid by contract (tested below)
        kinds = tuple(k for k in kinds if k not in BEYOND_THE_MAP)
    if aligned and sampling_ratio <= 0:
        # torchvision's CPU kernel cannot size its sample table for these (see the test below)
        kinds = tuple(k for k in kinds if k != "negative")
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "batch": draw(st.integers(1, 3)),
        "num_rois": draw(st.sampled_from([0, 1, 5, 12])),
        "channels": draw(st.integers(1, 4)),
        "image_hw": (64 * draw(st.integers(1, 4)), 64 * draw(st.integers(1, 4))),
        "scales": [2.0 ** -(k0 + i) for i in range(levels)],
        "output_size": draw(st.sampled_from([1, 2, 7])),
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
        "kinds": draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3)),
    }


def _run(case: dict, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(case["seed"])
    feats = make_features(rng, case["batch"], case["channels"], case["image_hw"], case["scales"])
    n = case["num_rois"]
    kinds = case["kinds"]
    rois = np.stack(
        [
            np.concatenate([make_boxes(rng, n, case["image_hw"], k) for k in kinds])[
                rng.permutation(n * len(kinds))[:n]
            ]
            for _ in range(case["batch"])
        ]
    ).reshape(case["batch"], n, 4)
    fields = MultiLevelRoIAlignFields(
        output_size=case["output_size"],
        sampling_ratio=case["sampling_ratio"],
        aligned=int(case["aligned"]),
        spatial_scales=tuple(case["scales"]),
    )
    ours = multilevel_roi_align([f.astype(dtype) for f in feats], rois, fields)
    # fp16 runs are compared with torchvision on the same (fp16-rounded) values in float32
    ref_feats = [f.astype(dtype).astype(np.float32) for f in feats]
    ref = torchvision_multilevel(
        ref_feats,
        rois,
        case["output_size"],
        case["sampling_ratio"],
        case["aligned"],
        case["scales"],
        case["image_hw"],
    )
    return ours, ref


@SETTINGS
@given(multilevel_cases())
def test_multilevel_matches_torchvision(case: dict) -> None:
    ours, ref = _run(case)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=FP32_TOL)


@settings(max_examples=20, deadline=None)
@given(multilevel_cases())
def test_multilevel_fp16_matches_torchvision(case: dict) -> None:
    ours, ref = _run(case, np.float16)
    assert ours.dtype == np.float16
    # The reference pools the same FP16-rounded features in FP32, so the only error is ours'
    # one rounding of the result to FP16: at most half an ulp, 2**-11 relative (measured
    # 4.86e-4 relative, i.e. 2**-11 less a hair; the same with ORT 1.31.1 and 1.32.0).
    np.testing.assert_allclose(ours.astype(np.float32), ref, rtol=2.0**-11, atol=1e-5)


def test_level_boundaries_choose_torchvision_levels() -> None:
    """Boxes whose sqrt(area) is 224 * 2^k within +-64 float32 ulps: every level agrees."""
    sides = []
    for k in range(-3, 3):
        exact = np.float32(224.0 * 2.0**k)
        sides.append((exact.view(np.int32) + np.arange(-64, 65, dtype=np.int32)).view(np.float32))
    side = np.concatenate(sides)
    rois = np.zeros((1, side.size, 4), np.float32)
    rois[0, :, 2] = side
    rois[0, :, 3] = side
    scales = [0.25, 0.125, 0.0625, 0.03125]
    # level l holds the constant l + 1: the pooled value names the level that was chosen
    feats = [np.full((1, 1, 512 >> lvl, 512 >> lvl), lvl + 1.0, np.float32) for lvl in range(4)]
    fields = MultiLevelRoIAlignFields(1, 1, 0, tuple(scales))
    ours = multilevel_roi_align(feats, rois, fields)[0, :, 0, 0, 0]
    ref = torchvision_multilevel(feats, rois, 1, 1, False, scales, (2048, 2048))[0, :, 0, 0, 0]
    np.testing.assert_array_equal(ours, ref)
    assert set(np.unique(ours)) == {1.0, 2.0, 3.0, 4.0}


def test_negative_boxes_aligned_adaptive_pool_zeros() -> None:
    """x2 < x1 with aligned=1 and adaptive sampling: the sample grid is empty, the output zero.
    (torchvision's CPU kernel raises "cannot create std::vector larger than max_size()" here.)"""
    feats = [np.ones((1, 2, 16, 16), np.float32)]
    rois = np.array([[[40.0, 10.0, 20.0, 50.0], [40.0, 50.0, 20.0, 10.0]]], np.float32)
    out = multilevel_roi_align(feats, rois, MultiLevelRoIAlignFields(3, 0, 1, (0.25,)))
    np.testing.assert_array_equal(out, 0.0)
    with pytest.raises(ValueError):
        torchvision_multilevel(feats, rois[:, :1], 3, 0, True, [0.25], (64, 64))


def test_empty_and_large_batch() -> None:
    fields = MultiLevelRoIAlignFields(7, 2, 0, (0.25, 0.125))
    feats = [np.ones((5, 3, 16, 16), np.float32), np.ones((5, 3, 8, 8), np.float32)]
    assert multilevel_roi_align(feats, np.zeros((5, 0, 4), np.float32), fields).shape == (
        5,
        0,
        3,
        7,
        7,
    )


def test_accepts_torch_tensors() -> None:
    rng = np.random.default_rng(0)
    feats = make_features(rng, 1, 2, (64, 64), [0.25, 0.125])
    rois = make_boxes(rng, 4, (64, 64), "normal")[None]
    fields = MultiLevelRoIAlignFields(7, 2, 0, (0.25, 0.125))
    a = multilevel_roi_align([torch.from_numpy(f) for f in feats], torch.from_numpy(rois), fields)
    np.testing.assert_array_equal(a, multilevel_roi_align(feats, rois, fields))


def test_bad_inputs_raise_maskrt_error() -> None:
    fields = MultiLevelRoIAlignFields(7, 2, 0, (0.25, 0.125))
    feats = [np.ones((1, 3, 16, 16), np.float32)]
    with pytest.raises(MaskrtError, match="spatial scales"):
        multilevel_roi_align(feats, np.zeros((1, 1, 4), np.float32), fields)
    with pytest.raises(MaskrtError, match="rois must be"):
        multilevel_roi_align(feats * 2, np.zeros((2, 1, 4), np.float32), fields)
    with pytest.raises(MaskrtError, match="float32 or float16"):
        multilevel_roi_align([f.astype(np.float64) for f in feats * 2], np.zeros((1, 1, 4)), fields)
    with pytest.raises(MaskrtError, match="batch index"):
        roi_align_single(
            feats[0], np.zeros((1, 4), np.float32), np.array([3]), SingleRoIAlignFields(2, 2)
        )


# ----------------------------------------------------------------------------------------------
# single-level mode: ONNX RoiAlign semantics


def _onnx_roialign(x, rois, idx, attrs):  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("RoiAlign", ["X", "rois", "batch_indices"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node],
        "roialign",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [None] * 4),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model).run(None, {"X": x, "rois": rois, "batch_indices": idx})[0]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 2),
    num_rois=st.integers(0, 3),
    out_hw=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    sampling_ratio=st.sampled_from([0, 1, 2]),
    spatial_scale=st.sampled_from([1.0, 0.5, 0.25]),
    ctm=st.sampled_from(["half_pixel", "output_half_pixel"]),
    kind=st.sampled_from(BOX_KINDS),
)
def test_single_matches_onnx_reference(
    seed: int,
    batch: int,
    num_rois: int,
    out_hw: tuple[int, int],
    sampling_ratio: int,
    spatial_scale: float,
    ctm: str,
    kind: str,
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 2, 10, 12)).astype(np.float32)
    if kind == "huge" or (kind in BEYOND_THE_MAP and sampling_ratio == 0):
        kind = "normal"  # the capped grid: see test_boxes_beyond_the_map_sample_the_capped_grid
    rois = make_boxes(rng, num_rois, (12, 14), kind)
    idx = rng.integers(0, batch, num_rois).astype(np.int64)
    attrs = {
        "output_height": out_hw[0],
        "output_width": out_hw[1],
        "sampling_ratio": sampling_ratio,
        "spatial_scale": spatial_scale,
        "coordinate_transformation_mode": ctm,
        "mode": "avg",
    }
    fields = SingleRoIAlignFields.from_onnx_roialign(attrs)
    ours = roi_align_single(x, rois, idx, fields)
    if num_rois == 0:
        assert ours.shape == (0, 2, *out_hw)
        return
    np.testing.assert_allclose(ours, _onnx_roialign(x, rois, idx, attrs), rtol=0, atol=FP32_TOL)


def _onnx_backend_cases() -> list[tuple[str, Any, list[np.ndarray], list[np.ndarray]]]:
    """The RoiAlign node tests the onnx package ships: from its data folder when installed,
    else generated by its test-case module (the same models, inputs and expected outputs)."""
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    cases: list[tuple[str, Any, list[np.ndarray], list[np.ndarray]]] = []
    for d in sorted(data.glob("test_roialign_*")):
        model = onnx.load(d / "model.onnx")
        ds = d / "test_data_set_0"
        load = [numpy_helper.to_array(onnx.load_tensor(p)) for p in sorted(ds.glob("input_*.pb"))]
        expected = [
            numpy_helper.to_array(onnx.load_tensor(p)) for p in sorted(ds.glob("output_*.pb"))
        ]
        cases.append((d.name, model, load, expected))
    if cases:
        return cases
    from onnx.backend.test.case import node as node_cases
    from onnx.backend.test.case.node.roialign import RoiAlign

    for name in dir(RoiAlign):
        if name.startswith("export_roialign"):
            try:
                getattr(RoiAlign, name)()
            except ValueError:  # already generated in this process
                pass
    for case in node_cases._NodeTestCases:
        if case.name.startswith("test_roialign") and case.model is not None and case.data_sets:
            inputs, outputs = case.data_sets[0]
            cases.append((case.name, case.model, list(inputs), list(outputs)))
    return cases


def test_single_matches_onnx_backend_cases() -> None:
    from onnx import helper

    cases = _onnx_backend_cases()
    assert cases, "onnx ships RoiAlign backend test cases"
    ran = 0
    for name, model, inputs, expected in cases:
        node = model.graph.node[0]  # type: ignore[attr-defined]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("mode", b"avg") in (b"max", "max"):
            with pytest.raises(MaskrtError, match="not supported"):
                SingleRoIAlignFields.from_onnx_roialign(attrs)
            continue
        fields = SingleRoIAlignFields.from_onnx_roialign(attrs)
        ours = roi_align_single(inputs[0], inputs[1], inputs[2], fields)
        # onnx's stored expectations were computed by another implementation and stored as float32:
        # measured 8.4e-5 at values up to 0.97 (the same data and result with onnx 1.22 and 1.23,
        # ORT 1.31.1 and 1.32.0); the bound is the one onnx's own backend tests apply.
        np.testing.assert_allclose(ours, expected[0], rtol=0, atol=1e-4, err_msg=name)
        ran += 1
    assert ran >= 2


# Bilinear taps the CPU kernel caches per RoI (kMaxCachedTaps in roialign_cpu.cpp): 7 x 7 bins
# with adaptive sampling cache 49 * ceil(side / 7)**2 taps, under the bound up to a 511-px box.
MAX_CACHED_TAPS = 1 << 18


@pytest.mark.parametrize("side", [511, 518])  # 261121 taps (cached), 268324 (on the fly)
def test_adaptive_sampling_past_the_tap_cache_gives_the_same_values(side: int) -> None:
    grid = (side + 6) // 7  # adaptive sampling: ceil(side / output size)
    assert (49 * grid * grid > MAX_CACHED_TAPS) == (side == 518)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 530, 530)).astype(np.float32)
    rois = np.array([[3.25, 5.5, 3.25 + side, 5.5 + side]], np.float32)
    ours = roi_align_single(x, rois, np.zeros(1, np.int64), SingleRoIAlignFields(7, 7, 0, 1.0, 0))
    with_index = torch.from_numpy(np.concatenate([np.zeros((1, 1), np.float32), rois], axis=1))
    ref = roi_align(torch.from_numpy(x), with_index, (7, 7), 1.0, 0, aligned=False).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=FP32_TOL)


def _torchvision_single(
    x: np.ndarray, rois: np.ndarray, out: int, scale: float, sampling_ratio: int, aligned: bool
) -> np.ndarray:
    """torchvision's roi_align of every box on image 0."""
    with_index = np.concatenate([np.zeros((len(rois), 1), np.float32), rois], axis=1)
    return roi_align(
        torch.from_numpy(x), torch.from_numpy(with_index), (out, out), scale, sampling_ratio,
        aligned=aligned,
    ).numpy()  # fmt: skip


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("side", "out"), [(28, 7), (30, 7), (13, 1), (50, 14)])
def test_the_grid_cap_changes_nothing_for_boxes_inside_the_map(
    aligned: bool, side: int, out: int
) -> None:
    """Adaptive sampling (sampling_ratio 0) of every box inside the feature map, the whole map
    included (its grid ceil(side / P) is the largest such a box asks for), equals torchvision's
    roi_align exactly: the cap floor(side / P) + 2 is never reached there."""
    rng = np.random.default_rng(side)
    x = rng.standard_normal((1, 3, side, side + 3)).astype(np.float32)
    h, w = float(side), float(side + 3)
    corners = rng.uniform(0, 1, (200, 4)) * [w, h, w, h]
    boxes = np.concatenate(
        [
            [[0.0, 0.0, w, h], [0.0, 0.0, w, 1.0], [0.5, 0.25, w, h]],
            np.stack(
                [
                    np.minimum(corners[:, 0], corners[:, 2]),
                    np.minimum(corners[:, 1], corners[:, 3]),
                    np.maximum(corners[:, 0], corners[:, 2]),
                    np.maximum(corners[:, 1], corners[:, 3]),
                ],
                axis=1,
            ),
        ]
    ).astype(np.float32)
    fields = SingleRoIAlignFields(out, out, 0, 1.0, int(aligned))
    ours = roi_align_single(x, boxes, np.zeros(len(boxes), np.int64), fields)
    ref = _torchvision_single(x, boxes, out, 1.0, 0, aligned)
    np.testing.assert_array_equal(ours, ref)


def test_boxes_beyond_the_map_sample_the_capped_grid() -> None:
    """A box far larger than its (square) map samples floor(H / P) + 2 points per bin side:
    torchvision's roi_align with that fixed sampling_ratio is the oracle. Both the single-level
    and the multi-level entry point (one level: no level mapping)."""
    side, out = 40, 7
    cap = side // out + 2
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, side, side)).astype(np.float32)
    boxes = np.array(
        [[-300.0, -300.0, 900.0, 900.0], [0.0, 0.0, 1e7, 1e7], [-5e6, -5e6, 5e6, 5e6]], np.float32
    )
    ref = _torchvision_single(x, boxes, out, 1.0, cap, False)
    ours = roi_align_single(
        x, boxes, np.zeros(len(boxes), np.int64), SingleRoIAlignFields(out, out, 0, 1.0, 0)
    )
    np.testing.assert_array_equal(ours, ref)
    multi = multilevel_roi_align([x], boxes[None], MultiLevelRoIAlignFields(out, 0, 0, (1.0,)))
    np.testing.assert_array_equal(multi[0], ref)


_NON_FINITE = """
import numpy as np
from maskrt.plugins import (MultiLevelRoIAlignFields, SingleRoIAlignFields,
                            multilevel_roi_align, roi_align_single)
nan, inf = float("nan"), float("inf")
boxes = np.array([
    [nan, 0, 10, 10], [0, 0, nan, nan], [nan, nan, nan, nan],
    [0, 0, inf, inf], [-inf, -inf, inf, inf], [0, 0, inf, 10], [inf, inf, inf, inf],
    [-inf, 0, 10, 10], [1e30, 1e30, 1e30, 1e30], [0, 0, 1e30, 1e30], [-1e30, -1e30, 1e30, 1e30],
    [1e30, 0, -1e30, 10], [0, 0, 3.4e38, 3.4e38],
], np.float32)
rng = np.random.default_rng(0)
feats = [rng.standard_normal((1, 4, 200 >> k, 336 >> k)).astype(np.float32) for k in range(4)]
for sampling_ratio in (0, 2):
    for aligned in (0, 1):
        f = MultiLevelRoIAlignFields(7, sampling_ratio, aligned, (0.25, 0.125, 0.0625, 0.03125))
        multi = multilevel_roi_align(feats, boxes[None], f)
        single = roi_align_single(feats[0], boxes, np.zeros(len(boxes), np.int64),
                                  SingleRoIAlignFields(7, 7, sampling_ratio, 0.25, aligned))
        for out in (multi[0], single):
            print(int(np.isfinite(out).all()), float(np.abs(out).max()))
"""


def test_nan_inf_and_1e30_boxes_pool_zeros_in_bounded_time(tmp_path: Path) -> None:
    """NaN, +-inf and 1e30 boxes (what an uninitialised RoI buffer holds in TensorRT's timing
    runs) through the CPU twin, which shares roialign_math.h with the CUDA kernel: every
    combination returns, in seconds, finite values; every such box pools zeros (NaN boxes get
    no level or an empty grid; the others' samples land outside the map or on NaN coordinates).
    Uncapped, [0, 0, 1e30, 1e30] asks for ceil(2.5e29 / 7) samples per bin side and
    float -> int conversions of NaN and 1e30 are undefined."""
    child = subprocess.run(
        [sys.executable, "-c", _NON_FINITE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr
    lines = child.stdout.split("\n")[:-1]
    assert lines == ["1 0.0"] * 8, child.stdout


_OUT_OF_MEMORY = """
import resource
import numpy as np
from maskrt.errors import MaskrtError
from maskrt.plugins import SingleRoIAlignFields, _library, roi_align_single

_library.load(_library.CPU)
x = np.ones((1, 1, 520, 520), np.float32)
args = (x, np.array([[0, 0, 511, 511]], np.float32), np.zeros(1, np.int64),
        SingleRoIAlignFields(7, 7, 0, 1.0, 0))
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 20), resource.RLIM_INFINITY))
try:
    roi_align_single(*args)  # its 8 MiB tap cache cannot be had under the limit
except MaskrtError as e:
    print("refused:", e)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_out_of_memory_in_the_cpu_kernel_is_an_error_not_an_abort() -> None:
    """std::bad_alloc (and a thread that cannot start) are caught inside the C ABI: Python gets
    a MaskrtError and goes on, where an escaping exception would abort the process."""
    child = subprocess.run(
        [sys.executable, "-c", _OUT_OF_MEMORY], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "refused: roi_align_single: out of host memory" in child.stdout, child.stdout
