"""Precision groups (:mod:`maskrt.calibration.groups`) and INT8 graphs with groups in FP16.

Oracles: the torchvision model the graph was exported from (which module each convolution's
weight belongs to, how many convolutions each backbone stage holds), ONNX shape inference for
element types, ONNX Runtime runs the graphs, the TensorRT graph check reads them after surgery,
and the calibration package as it was before groups existed (read from git) makes the plain
INT8 graph that the current code must reproduce byte for byte.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from _calibration_graphs import copy_images, elem_types, producers, run_ort
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from maskrt import contract
from maskrt.calibration.fp16 import calibrate_fp16
from maskrt.calibration.groups import find_groups, matrix_macs, parse_group_names
from maskrt.calibration.int8 import quantize_to_int8
from maskrt.calibration.regions import (
    find_regions,
    fold_identity_constants,
    is_unit,
    name_nodes,
)
from maskrt.errors import MaskrtError
from maskrt.pipeline.validate import int8_group_precisions

REPO = Path(__file__).resolve().parents[1]
# main before precision groups: its calibration package makes today's all-INT8 graph
BASE_COMMIT = "242afa08c4542fbea02ad6360b824efea962cb9d"
QDQ = ("QuantizeLinear", "DequantizeLinear")
MATRIX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _prepared(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    fold_identity_constants(model)
    name_nodes(model)
    return model


def _weight_owner(name: str) -> str:
    """The torchvision module an initializer belongs to, by its exported name: the oracle."""
    for prefix, group in (
        ("model.backbone.fpn.", "fpn"),
        ("model.rpn.head.", "rpn"),
        ("model.roi_heads.box_", "box"),
        ("model.roi_heads.mask_", "mask"),
    ):
        if name.startswith(prefix):
            return group
    return "backbone"  # BN-folded trunk convolutions lose their module names


def _stage_conv_counts() -> list[int]:
    """Convolutions per backbone stage of the demo model: up to each layer the FPN taps."""
    import torch

    from maskrt.specs import build_model, demo_spec

    body = build_model(demo_spec()).backbone.body
    counts, n = [], 0
    for name, module in body.named_children():
        n += sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
        if name in body.return_layers:
            counts.append(n)
            n = 0
    return counts


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _torch_conv_macs(side: int) -> dict[str, float]:
    """MACs of the demo model's trunk and FPN convolutions on a side x side input, counted by
    forward hooks on torchvision's modules."""
    import torch

    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    backbone = build_model(demo_spec()).eval().backbone
    counts = {"backbone": 0.0, "fpn": 0.0}

    def hook(key: str):  # noqa: ANN202 - a torch hook
        def count(m: torch.nn.Conv2d, _: object, out: torch.Tensor) -> None:
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            counts[key] += float(out.numel() * k)

        return count

    for key, part in (("backbone", backbone.body), ("fpn", backbone.fpn)):
        for m in part.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(hook(key))
    with torch.no_grad():
        backbone(torch.zeros(1, 3, side, side))
    return counts


def test_groups_match_the_torchvision_modules(random_demo_deploy_graph: Path) -> None:
    model = _prepared(random_demo_deploy_graph)
    groups = find_groups(model, find_regions(model))
    stages = [g for g in groups if g.startswith("backbone")]
    assert list(groups) == [*stages, "fpn", "rpn", "box", "mask"]
    g = model.graph
    convs = {}
    for name, nodes in groups.items():
        owners = {
            _weight_owner(g.node[i].input[1]) for i in nodes if g.node[i].op_type in MATRIX_OPS
        }
        assert owners == {name.rstrip("0123456789")}, (name, owners)
        convs[name] = sum(g.node[i].op_type in MATRIX_OPS for i in nodes)
    assert [convs[s] for s in stages] == _stage_conv_counts()
    # torchvision: 2 per FPN level; the RPN's 3 convolutions on each of the FPN's 4 maps (3
    # levels and the max-pooled one); fc6, fc7 and the two predictors; 2 + 2 mask convolutions
    assert (convs["fpn"], convs["rpn"], convs["box"], convs["mask"]) == (6, 12, 4, 4)
    everything = [i for nodes in groups.values() for i in nodes]
    assert len(everything) == len(set(everything))  # disjoint

    # MACs of the trunk and FPN at 128 x 128 against the torchvision modules' own convolutions
    macs = matrix_macs(model, groups, 128, proposals=10, detections=5)
    want = _torch_conv_macs(128)
    for name, modules in (("backbone", stages), ("fpn", ["fpn"])):
        got = sum(macs[i] for s in modules for i in groups[s] if i in macs)
        assert got == want[name], name
    # box head: fc6 and fc7 and the two predictors, on 10 proposals
    fc = [g.node[i] for i in groups["box"] if g.node[i].op_type == "Gemm"]
    per_roi = sum(numpy_helper.to_array(_init(model, n.input[1])).size for n in fc)
    assert sum(macs[i] for i in groups["box"] if i in macs) == 10 * per_roi

    assert parse_group_names("box, backbone", groups) == ["box", *stages]
    with pytest.raises(MaskrtError, match="no group 'keypoint'.*box, mask"):
        parse_group_names("keypoint", groups)
    with pytest.raises(MaskrtError, match="names no group"):
        parse_group_names(" , ", groups)


def _base_calibration(tmp: Path) -> ModuleType:
    """The calibration package at BASE_COMMIT, importable as ``base_calibration``."""
    pkg = tmp / "base_calibration"
    pkg.mkdir(parents=True)
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", BASE_COMMIT, "calibration/"],
        capture_output=True, text=True,
    )  # fmt: skip
    if listing.returncode != 0:
        pytest.fail(f"needs a git checkout holding {BASE_COMMIT}: {listing.stderr.strip()}")
    for path in listing.stdout.split():
        if path.endswith(".py"):
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{BASE_COMMIT}:{path}"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            (pkg / Path(path).name).write_text(text)
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("base_calibration.int8")
    finally:
        sys.path.remove(str(tmp))


@pytest.mark.slow
def test_without_groups_the_int8_graph_is_byte_identical_to_the_base(
    random_demo_deploy_graph: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    images = copy_images(shapes_dataset / "train", tmp_path / "calib", 2)
    base = _base_calibration(tmp_path / "base")
    old, new = tmp_path / "old.int8.onnx", tmp_path / "new.int8.onnx"
    base.quantize_to_int8(random_demo_deploy_graph, old, images, method="minmax")
    quantize_to_int8(random_demo_deploy_graph, new, images, method="minmax")
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(new)).graph.node) > 20
    assert new.read_bytes() == old.read_bytes()
    shown = int8_group_precisions(new, random_demo_deploy_graph)  # no metadata: all INT8
    assert list(shown)[-4:] == ["fpn", "rpn", "box", "mask"] and set(shown.values()) == {"int8"}
    # the FP16 conversion shares its code with the FP16 groups: unchanged too
    base_fp16 = importlib.import_module("base_calibration.fp16")
    base_fp16.calibrate_fp16(random_demo_deploy_graph, tmp_path / "old.fp16.onnx")
    calibrate_fp16(random_demo_deploy_graph, tmp_path / "new.fp16.onnx")
    assert (tmp_path / "new.fp16.onnx").read_bytes() == (tmp_path / "old.fp16.onnx").read_bytes()


def _check_mixed(model: onnx.ModelProto, fp16: set[str], fp32_graph: Path) -> None:
    """What a strongly typed TensorRT network needs of a mixed graph, and that it runs."""
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.META_PRECISION] == "int8"
    precisions = json.loads(meta[contract.META_PRECISION_GROUPS])
    assert {g for g, p in precisions.items() if p == "fp16"} == fp16
    assert set(precisions.values()) == {"int8", "fp16"} - (
        {"int8"} if fp16 == set(precisions) else set()
    )
    types = elem_types(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = producers(model)
    for n in model.graph.node:
        if n.op_type in QDQ:
            scale, zero = inits[n.input[1]], inits[n.input[2]]
            assert scale.dtype == np.float32 and zero.dtype == np.int8 and not zero.any()
            per_channel = scale.ndim == 1
            # a per-channel scale only on weights (initializers), a scalar on activations
            assert per_channel == (n.op_type == "DequantizeLinear" and n.input[0] in inits)
            assert types[n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]] == (
                TensorProto.FLOAT
            )
        if n.op_type == "Cast" and TensorProto.FLOAT16 in (types[n.input[0]], types[n.output[0]]):
            # a border between FP16 and FP32 (the graph's own int/float Casts aside)
            assert {types[n.input[0]], types[n.output[0]]} == {
                TensorProto.FLOAT,
                TensorProto.FLOAT16,
            }
        if n.op_type in MATRIX_OPS and types[n.output[0]] == TensorProto.FLOAT16:
            # an FP16 layer: no Q/DQ on any input
            assert all(prod[t].op_type not in QDQ for t in n.input if t in prod), n.name
        if is_unit(n):  # the plugin takes one type on all its levels
            assert len({types[t] for t in n.input[:-1]}) == 1, n.name

    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    feeds = {contract.INPUT_IMAGES: x, contract.INPUT_IMAGE_SIZES: np.array([[128, 128]], np.int32)}
    reference = run_ort(onnx.load(str(fp32_graph)), feeds)
    got = run_ort(model, feeds)
    assert [o.shape for o in got] == [o.shape for o in reference]
    surgery = pytest.importorskip("maskrt.plugins.surgery")
    from maskrt.plugins import ort_session
    from maskrt.plugins.tensorrt_check import tensorrt_findings

    surgered, report = surgery.surgery(model)
    assert report.replaced == 2
    assert tensorrt_findings(surgered) == []  # what `maskrt build` checks before TensorRT
    assert ort_session(surgered).run(None, feeds)[1].shape == reference[1].shape


@pytest.mark.slow
def test_fp16_groups_have_no_qdq_and_meet_int8_through_casts(
    random_demo_deploy_graph: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    images = copy_images(shapes_dataset / "train", tmp_path / "calib", 2)
    cache = tmp_path / "calib.json"
    fp32 = _prepared(random_demo_deploy_graph)
    groups = find_groups(fp32, find_regions(fp32))
    names = {i: n.name for i, n in enumerate(fp32.graph.node)}
    runner = CliRunner()
    from maskrt.pipeline.main import main

    # the FPN and RPN in FP16 (the RoIAlign units then read FP16 levels, the heads are INT8),
    # then the heads in FP16 (FP32 levels, FP16 pooled features): both borders of the units
    choices = {"fpn,rpn": {"fpn", "rpn"}, "box,mask,backbone1": {"box", "mask", "backbone1"}}
    for choice, fp16 in choices.items():
        out = tmp_path / f"{choice}.onnx"
        r = runner.invoke(main, ["calibrate", str(random_demo_deploy_graph), "--precision", "int8",
                                 "--calib-data", str(images), "--method", "minmax", "--cache",
                                 str(cache), "--fp16-groups", choice, "-o", str(out)])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert f"FP16 groups: {', '.join(sorted(fp16, key=list(groups).index))}" in r.output
        model = onnx.load(str(out))
        _check_mixed(model, fp16, random_demo_deploy_graph)
        shown = int8_group_precisions(out, random_demo_deploy_graph)  # `maskrt validate`'s
        assert shown == {g: "fp16" if g in fp16 else "int8" for g in groups}
        # every matrix layer of an FP16 group computes in FP16, of an INT8 group reads DQ
        types, prod = elem_types(model), producers(model)
        by_name = {n.name: n for n in model.graph.node}
        for group, nodes in groups.items():
            for i in nodes:
                node = by_name.get(names[i])
                if node is None or node.op_type not in MATRIX_OPS:
                    continue
                if group in fp16:
                    assert types[node.output[0]] == TensorProto.FLOAT16, node.name
                elif types[node.output[0]] == TensorProto.FLOAT:
                    pass  # INT8 layer or a prediction layer kept FP32, as without groups
                else:
                    raise AssertionError(f"{node.name} of INT8 group {group} is not FP32")
            if group not in fp16:
                assert any(
                    prod[t].op_type == "DequantizeLinear"
                    for i in nodes
                    if names[i] in by_name
                    for t in by_name[names[i]].input
                    if t in prod
                ), group

    # every group FP16: no Q/DQ at all (an empty node list must not mean "quantize everything")
    out = tmp_path / "all.onnx"
    quantize_to_int8(random_demo_deploy_graph, out, images, method="minmax", cache=cache,
                     fp16_groups=list(groups))  # fmt: skip
    model = onnx.load(str(out))
    assert not any(n.op_type in QDQ for n in model.graph.node)
    _check_mixed(model, set(groups), random_demo_deploy_graph)

    r = runner.invoke(main, ["calibrate", str(random_demo_deploy_graph), "--precision", "int8",
                             "--calib-data", str(images), "--fp16-groups", "neck",
                             "-o", str(tmp_path / "x.onnx")])  # fmt: skip
    assert r.exit_code == 1 and "no group 'neck'" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["calibrate", str(random_demo_deploy_graph), "--precision", "fp16",
                             "--fp16-groups", "box", "-o", str(tmp_path / "y.onnx")])  # fmt: skip
    assert r.exit_code == 1 and "apply to --precision int8 only" in r.output
