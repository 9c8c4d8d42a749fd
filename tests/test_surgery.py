"""Graph surgery on small graphs: the surgered graph computes what the original computes.

Oracle: ONNX Runtime running the unsurgered graph (it inlines the ``maskrt::MultiScaleRoIAlign``
function, or runs the standard RoiAlign), against ONNX Runtime running the surgered graph with
the plugin's CPU implementation registered as a custom op.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _roialign_cases import FP32_TOL
from click.testing import CliRunner
from onnx import TensorProto, helper

from maskrt.contract import META_SURGERED
from maskrt.errors import MaskrtError
from maskrt.export.functions import multiscale_roi_align_function
from maskrt.export.ops import RoIAlignUnit
from maskrt.onnxio import IR_VERSION
from maskrt.plugins.contract import (
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SINGLE_PLUGIN_NAME,
    UNIT_DOMAIN,
    UNIT_DOMAIN_VERSION,
    UNIT_OP_TYPE,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)
from maskrt.plugins.surgery import surgery

OPSET = 17
SCALES = (0.25, 0.125, 0.0625, 0.03125)
IMAGE = 256  # feature maps 64, 32, 16, 8
CHANNELS = 8


# ----------------------------------------------------------------------------------------------
# graphs built the way `maskrt export` writes them


def _unit_model(units: dict[str, int], dead_branch: bool = True) -> onnx.ModelProto:
    """Feature maps + rois [B, N, 4] -> one maskrt::MultiScaleRoIAlign unit per ``units`` entry
    (output name -> output size), each followed by a Relu, plus constant arithmetic to fold and,
    optionally, a dead node."""
    feats = [f"p{i}" for i in range(len(SCALES))]
    inputs = [
        helper.make_tensor_value_info(
            f, TensorProto.FLOAT, ["B", CHANNELS, int(IMAGE * s), int(IMAGE * s)]
        )
        for f, s in zip(feats, SCALES)
    ]
    inputs.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["B", "N", 4]))
    nodes, outputs = [], []
    # rois + (1 - 1): a constant subgraph that folding turns into one initializer
    nodes += [
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("v", 1, [], [1.0])),
        helper.make_node("Sub", ["one", "one"], ["zero"]),
        helper.make_node("Add", ["rois", "zero"], ["rois_same"]),
    ]
    for name, p in units.items():
        unit = RoIAlignUnit(output_size=p, sampling_ratio=2, aligned=0, spatial_scales=SCALES)
        nodes.append(
            helper.make_node(
                UNIT_OP_TYPE,
                [*feats, "rois_same"],
                [f"{name}_pooled"],
                domain=UNIT_DOMAIN,
                **unit.field_attributes(),
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_pooled"], [name]))
        outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "N", CHANNELS, p, p])
        )
    if dead_branch:
        nodes.append(helper.make_node("Neg", ["rois"], ["unused"]))
    graph = helper.make_graph(nodes, "units", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            helper.make_opsetid(UNIT_DOMAIN, UNIT_DOMAIN_VERSION),
        ],
        functions=[multiscale_roi_align_function(len(SCALES), OPSET)],
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"maskrt.precision": "fp32", META_SURGERED: "0"})
    onnx.checker.check_model(model, full_check=True)
    return model


def _roialign_model(**attrs: object) -> onnx.ModelProto:
    """One standard ONNX RoiAlign: x [1, C, 32, 32], rois [R, 4], batch_indices [R]."""
    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "lone",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, CHANNELS, 32, 32]),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 4]),
            helper.make_tensor_value_info("batch", TensorProto.INT64, ["R"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _feeds(batch: int = 2, n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Random features and boxes whose sizes span every FPN level (and beyond)."""
    rng = np.random.default_rng(seed)
    feeds = {
        f"p{i}": rng.standard_normal((batch, CHANNELS, int(IMAGE * s), int(IMAGE * s))).astype(
            np.float32
        )
        for i, s in enumerate(SCALES)
    }
    side = np.exp(rng.uniform(np.log(4.0), np.log(IMAGE * 1.5), size=(batch, n, 2)))
    xy = rng.uniform(-8.0, IMAGE * 0.8, size=(batch, n, 2))
    feeds["rois"] = np.concatenate([xy, xy + side], axis=-1).astype(np.float32)
    return feeds


def _session(model: onnx.ModelProto, plugin: bool) -> ort.InferenceSession:
    if plugin:
        from maskrt.plugins.ort import ort_session

        return ort_session(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _io(model: onnx.ModelProto) -> list[str]:
    return [str(v) for v in (*model.graph.input, *model.graph.output)]


# ----------------------------------------------------------------------------------------------
# maskrt::MultiScaleRoIAlign units


@pytest.fixture(scope="module")
def two_units() -> tuple[onnx.ModelProto, onnx.ModelProto, object]:
    model = _unit_model({"box": 7, "mask": 14})
    out, report = surgery(model)
    return model, out, report


def test_units_become_plugin_nodes(two_units) -> None:
    model, out, report = two_units
    assert report.units == 2 and report.replaced == 2 and not report.unrecognised
    plugins = [n for n in out.graph.node if n.op_type == PLUGIN_NAME]
    assert len(plugins) == 2
    for node in plugins:
        assert node.domain == PLUGIN_DOMAIN
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"].decode() == PLUGIN_VERSION
        assert attrs["plugin_namespace"].decode() == PLUGIN_NAMESPACE
        fields = MultiLevelRoIAlignFields.from_onnx_attributes(attrs)
        assert fields.spatial_scales == SCALES and fields.sampling_ratio == 2
        assert fields.aligned == 0 and fields.output_size in (7, 14)
        assert list(node.input) == ["p0", "p1", "p2", "p3", node.input[4]]
    # no maskrt op, function or opset import is left; the plugin's domain is imported
    assert not any(n.domain == UNIT_DOMAIN for n in out.graph.node)
    assert len(out.functions) == 0
    domains = {o.domain: o.version for o in out.opset_import}
    assert UNIT_DOMAIN not in domains and domains[PLUGIN_DOMAIN] == 1 and domains[""] == OPSET
    # cleaned up: dead Neg removed, (1 - 1) folded away, nodes sorted, I/O unchanged
    ops = [n.op_type for n in out.graph.node]
    assert "Neg" not in ops and "Sub" not in ops and "Constant" not in ops
    assert report.nodes_before == len(model.graph.node) and report.nodes_after == len(ops)
    assert _io(out) == _io(model)
    assert out.ir_version == model.ir_version
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta[META_SURGERED] == "1" and meta["maskrt.precision"] == "fp32"
    onnx.checker.check_model(out, full_check=True)


def test_plugin_output_shapes_are_declared(two_units) -> None:
    _, out, _ = two_units
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in out.graph.value_info
    }
    for node in out.graph.node:
        if node.op_type == PLUGIN_NAME:
            p = {a.name: a.i for a in node.attribute}["output_size"]
            assert shapes[node.output[0]] == ["B", "N", CHANNELS, p, p]


def test_units_outputs_unchanged_in_onnxruntime(two_units) -> None:
    model, out, _ = two_units
    feeds = _feeds()
    want = _session(model, plugin=False).run(None, feeds)
    got = _session(out, plugin=True).run(None, feeds)
    for w, g in zip(want, got):
        assert w.shape == g.shape and np.count_nonzero(w) > 0
        np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)


def test_idempotent(two_units) -> None:
    _, out, _ = two_units
    again, report = surgery(out)
    assert report.already_surgered and report.replaced == 0
    assert again.SerializeToString() == out.SerializeToString()


def test_input_model_is_not_modified() -> None:
    model = _unit_model({"box": 7})
    before = model.SerializeToString()
    surgery(model)
    assert model.SerializeToString() == before


# ----------------------------------------------------------------------------------------------
# lone RoiAlign -> the single-level plugin


@pytest.mark.parametrize(
    "attrs",
    [
        dict(output_height=5, output_width=3, sampling_ratio=2, spatial_scale=0.5),
        dict(coordinate_transformation_mode="output_half_pixel", output_height=4, output_width=4),
    ],
)
def test_lone_roialign_becomes_single_level_plugin(attrs: dict[str, object]) -> None:
    from maskrt.plugins.roialign import roi_align_single

    model = _roialign_model(**attrs)
    out, report = surgery(model)
    assert report.single_level == 1 and report.replaced == 1 and not report.unrecognised
    (node,) = out.graph.node
    assert node.op_type == SINGLE_PLUGIN_NAME and node.domain == PLUGIN_DOMAIN
    node_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node_attrs["plugin_namespace"].decode() == PLUGIN_NAMESPACE
    fields = SingleRoIAlignFields.from_onnx_attributes(node_attrs)
    assert fields == SingleRoIAlignFields.from_onnx_roialign(attrs)
    assert _io(out)[:3] == _io(model)[:3]

    # the plugin's CPU kernel with the node's fields pools what ONNX Runtime's RoiAlign pools
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, CHANNELS, 32, 32)).astype(np.float32)
    xy = rng.uniform(0, 40, size=(30, 2))
    rois = np.concatenate([xy, xy + rng.uniform(1, 30, size=(30, 2))], axis=1).astype(np.float32)
    batch = rng.integers(0, 2, size=30).astype(np.int64)
    (want,) = _session(model, plugin=False).run(None, {"x": x, "rois": rois, "batch": batch})
    got = roi_align_single(x, rois, batch, fields)
    np.testing.assert_allclose(got, want, rtol=0, atol=FP32_TOL)


def test_roialign_it_cannot_run_is_left_and_reported() -> None:
    model = _roialign_model(mode="max", output_height=2, output_width=2)
    out, report = surgery(model)
    assert report.replaced == 0
    assert len(report.unrecognised) == 1 and "max" in report.unrecognised[0]
    assert [n.op_type for n in out.graph.node] == ["RoiAlign"]


def test_graph_without_roialign_is_an_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(MaskrtError, match="no RoIAlign"):
        surgery(helper.make_model(graph))


# ----------------------------------------------------------------------------------------------
# a real `maskrt export` graph (demo architecture, random weights)


@pytest.fixture(scope="module")
def demo_export() -> onnx.ModelProto:
    import torch

    from maskrt.export.exporter import build_onnx
    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    spec = demo_spec()
    return build_onnx(build_model(spec), spec=spec, batch=None, height=128, width=160)


@pytest.mark.slow
def test_demo_export_surgery_matches_onnxruntime(demo_export: onnx.ModelProto) -> None:
    out, report = surgery(demo_export)
    assert report.units == 2 and report.replaced == 2 and not report.unrecognised
    assert not [n for n in out.graph.node if n.domain == UNIT_DOMAIN or n.op_type == "RoiAlign"]
    assert _io(out) == _io(demo_export)
    rng = np.random.default_rng(0)
    feeds = {
        "images": rng.random((2, 3, 128, 160), dtype=np.float32),
        "image_sizes": np.array([[128, 160], [100, 150]], dtype=np.int32),
    }
    want = _session(demo_export, plugin=False).run(None, feeds)
    got = _session(out, plugin=True).run(None, feeds)
    assert int(want[0].sum()) > 0  # detections, so the RoIAlign outputs matter
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=FP32_TOL)


# ----------------------------------------------------------------------------------------------
# the CLI


def _cli(*args: str):
    from maskrt.pipeline.main import main

    return CliRunner().invoke(main, ["surgery", *args])


def test_cli_writes_surgered_model(tmp_path: Path) -> None:
    src, dst = tmp_path / "m.onnx", tmp_path / "out" / "m.trt.onnx"
    onnx.save(_unit_model({"box": 7}), src)
    result = _cli(str(src), "-o", str(dst))
    assert result.exit_code == 0, result.output
    assert "replaced 1 RoIAlign unit(s)" in result.stdout and "nodes:" in result.stdout
    assert result.stdout.splitlines()[-1] == f"Wrote {dst}"
    out = onnx.load(dst)
    assert [n.op_type for n in out.graph.node].count(PLUGIN_NAME) == 1
    # twice: refuses to overwrite, then --force rewrites the same bytes from the surgered file
    result = _cli(str(src), "-o", str(dst))
    assert result.exit_code != 0 and "--force" in result.stderr
    again = tmp_path / "again.onnx"
    assert _cli(str(dst), "-o", str(again)).exit_code == 0
    assert again.read_bytes() == dst.read_bytes()
    assert _cli(str(src), "-o", str(dst), "--force").exit_code == 0
    # the old spelling of -o/--output is still accepted
    assert _cli(str(src), "--out", str(dst), "--force").exit_code == 0


def _broken_inputs(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    data = _unit_model({"box": 7}).SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph), plain)
    return {"not onnx": text, "truncated": truncated, "no roialign": plain,
            "missing": tmp_path / "missing.onnx"}  # fmt: skip


@pytest.mark.parametrize("case", ["not onnx", "truncated", "no roialign", "missing"])
def test_cli_errors_are_one_line_and_leave_no_file(tmp_path: Path, case: str) -> None:
    src = _broken_inputs(tmp_path)[case]
    dst = tmp_path / "out.onnx"
    before = set(tmp_path.iterdir())
    result = _cli(str(src), "-o", str(dst))
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in lines[0]
    assert not dst.exists() and set(tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------------------------
# torchvision's own MultiScaleRoIAlign, traced by plain torch.onnx.export


def _torchvision_pooler_model(num_images: int, tmp_path: Path) -> onnx.ModelProto:
    """torchvision.ops.MultiScaleRoIAlign over 4 levels for ``num_images`` images, exported by
    plain ``torch.onnx.export`` (opset 17): the per-level RoiAlign + ScatterElements pattern."""
    import warnings

    import torch
    from torchvision.ops import MultiScaleRoIAlign

    class Pooler(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)

        def forward(self, p0, p1, p2, p3, *boxes):  # type: ignore[no-untyped-def]
            feats = {"0": p0, "1": p1, "2": p2, "3": p3}
            return self.pool(feats, list(boxes), [(IMAGE, IMAGE)] * len(boxes))

    feeds = _feeds(batch=num_images, n=40)
    args = [torch.from_numpy(feeds[f"p{i}"]) for i in range(4)]
    args += [torch.from_numpy(feeds["rois"][b]) for b in range(num_images)]
    names = [f"p{i}" for i in range(4)] + [f"boxes{b}" for b in range(num_images)]
    path = tmp_path / f"pooler{num_images}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooler().eval(),
            tuple(args),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=names,
            output_names=["pooled"],
            dynamic_axes={f"boxes{b}": {0: f"K{b}"} for b in range(num_images)},
        )
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, IR_VERSION)
    return model


def test_torchvision_pooler_is_fused_into_one_plugin_node(tmp_path: Path) -> None:
    model = _torchvision_pooler_model(1, tmp_path)
    assert [n.op_type for n in model.graph.node].count("RoiAlign") == 4
    out, report = surgery(model)
    assert report.torchvision_units == 1 and report.replaced == 1 and not report.unrecognised
    ops = [n.op_type for n in out.graph.node]
    assert ops.count(PLUGIN_NAME) == 1 and "RoiAlign" not in ops and "ScatterElements" not in ops
    assert _io(out) == _io(model)

    for seed in (0, 1):
        feeds = _feeds(batch=1, n=60, seed=seed)
        feeds = {**{f"p{i}": feeds[f"p{i}"] for i in range(4)}, "boxes0": feeds["rois"][0]}
        want = _session(model, plugin=False).run(None, feeds)
        got = _session(out, plugin=True).run(None, feeds)
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=FP32_TOL)


def test_torchvision_pooler_over_two_images_falls_back_to_single_level(tmp_path: Path) -> None:
    """RoIs of two images carry a real batch-index column: the multi-level plugin (rois
    [B, N, 4]) cannot take them, so each level's RoiAlign becomes a single-level plugin node."""
    model = _torchvision_pooler_model(2, tmp_path)
    out, report = surgery(model)
    assert report.torchvision_units == 0 and report.single_level == 4
    assert len(report.unrecognised) == 1 and "not fused" in report.unrecognised[0]
    ops = [n.op_type for n in out.graph.node]
    assert ops.count(SINGLE_PLUGIN_NAME) == 4 and "RoiAlign" not in ops
    assert _io(out) == _io(model)
