"""Precision groups of a deploy graph: backbone stages, FPN, RPN head and the RoI heads, found
from the graph's data flow (never from node names), so that a group can be kept out of INT8.

Every group is a set of nodes of the feature region (:mod:`maskrt.calibration.regions`):

``backbone1`` .. ``backboneN``  the trunk, cut after each tensor the FPN taps (stage k ends at the
                              k-th tap in graph order; the input normalisation and the stem fall
                              in ``backbone1``)
``fpn``       lateral convolutions, top-down sums, output convolutions and the extra pooled level
``rpn``       the RPN head's convolutions on every level (up to where decoding starts)
``box``       the box head, fed by the RoIAlign unit whose RoIs come from no other unit
``mask``      the mask head: a unit whose RoIs come from the box head's detections and whose
              output reaches the graph output ``masks``
``keypoint``  likewise, reaching ``keypoint_logits``

How the cut is found: the *levels* are the feature inputs of the RoIAlign units. The FPN's
lateral convolutions are the convolutions feeding its top-down path (a ``Resize``, or an ``Add``
with a ``Resize`` input); the tensors they read are the trunk's taps. The trunk is what the taps
are computed from, the FPN the rest of what the levels are computed from. Downstream of the
levels, what is computed without a convolution (torchvision's max-pooled extra level) is FPN,
the rest the RPN head.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import onnx

from maskrt import contract
from maskrt.errors import MaskrtError

from .regions import MATMUL_OPS, Regions, consumers

BACKBONE = "backbone"  # CLI alias: every backbone stage
FPN, RPN, BOX, MASK, KEYPOINT = "fpn", "rpn", "box", "mask", "keypoint"
_HEAD_OUTPUTS = ((contract.OUTPUT_MASKS, MASK), (contract.OUTPUT_KEYPOINT_LOGITS, KEYPOINT))
_UPSAMPLE_OPS = frozenset({"Resize", "Upsample"})


def find_groups(model: onnx.ModelProto, regions: Regions) -> dict[str, set[int]]:
    """Group name -> indices of its nodes (see the module docstring), in the order backbone
    stages, fpn, rpn, box, mask, keypoint; groups a graph does not have are left out. Feature
    nodes outside every group (e.g. a ``Shape`` of the input) carry no precision choice."""
    g = model.graph
    feature = regions.feature_nodes
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    levels = {t for u in regions.units for t in g.node[u].input[:-1] if t}  # last input: RoIs

    def upstream(tensors: Iterable[str]) -> set[int]:
        """Feature nodes the tensors are computed from (inclusive of their producers)."""
        found: set[int] = set()
        todo = [producer[t] for t in tensors if t in producer]
        while todo:
            i = todo.pop()
            if i in found or i not in feature:
                continue
            found.add(i)
            todo.extend(producer[t] for t in g.node[i].input if t in producer)
        return found

    heads = _head_groups(model, regions, producer)
    in_heads = set().union(*heads.values()) if heads else set()
    before_levels = upstream(levels)
    taps = _taps(model, before_levels, producer) or levels
    stages: dict[str, set[int]] = {}
    taken: set[int] = set()
    for tap in sorted(taps, key=lambda t: producer.get(t, -1)):
        stage = upstream([tap]) - taken
        if stage:
            stages[f"{BACKBONE}{len(stages) + 1}"] = stage
            taken |= stage
    fpn = before_levels - taken
    rpn: set[int] = set()
    convolved: set[str] = set()  # tensors computed from a level through a matrix op
    reached = set(levels)
    for i in sorted(feature - before_levels - in_heads):  # graph order: producers first
        node = g.node[i]
        if not any(t in reached for t in node.input):
            continue
        reached.update(node.output)
        if node.op_type in MATMUL_OPS or any(t in convolved for t in node.input):
            convolved.update(node.output)
            rpn.add(i)
        else:
            fpn.add(i)
    groups = {**stages, FPN: fpn, RPN: rpn, **heads}
    return {k: v for k, v in groups.items() if v}


def _taps(model: onnx.ModelProto, before_levels: set[int], producer: dict[str, int]) -> set[str]:
    """The tensors the FPN's lateral convolutions read: laterals feed the top-down path (the
    input of an upsampling node, or an ``Add`` beside an upsampled tensor), possibly through
    other top-down sums and upsamplings."""
    g = model.graph
    laterals: set[int] = set()

    def walk(t: str) -> None:  # from a top-down tensor back to the convolutions that made it
        i = producer.get(t)
        if i is None or i not in before_levels:
            return
        node = g.node[i]
        if node.op_type in ("Conv", "ConvTranspose"):
            laterals.add(i)
        elif node.op_type == "Add" or node.op_type in _UPSAMPLE_OPS:
            for x in node.input[:1] if node.op_type in _UPSAMPLE_OPS else node.input:
                walk(x)

    for i in before_levels:
        node = g.node[i]
        if node.op_type in _UPSAMPLE_OPS:
            walk(node.input[0])
        elif node.op_type == "Add" and any(
            g.node[producer[t]].op_type in _UPSAMPLE_OPS for t in node.input if t in producer
        ):
            for t in node.input:
                walk(t)
    inits = {t.name for t in g.initializer}
    return {t for i in laterals for t in g.node[i].input[:1] if t not in inits}


def _head_groups(
    model: onnx.ModelProto, regions: Regions, producer: dict[str, int]
) -> dict[str, set[int]]:
    """box / mask / keypoint: the feature nodes computed from each RoIAlign unit's output."""
    g = model.graph
    users = consumers(model)

    def ancestors(tensors: Iterable[str]) -> set[int]:
        found: set[int] = set()
        todo = [producer[t] for t in tensors if t in producer]
        while todo:
            i = todo.pop()
            if i not in found:
                found.add(i)
                todo.extend(producer[t] for t in g.node[i].input if t in producer)
        return found

    def reaches(tensors: Iterable[str]) -> set[str]:
        """Every tensor computed from ``tensors`` anywhere in the graph."""
        seen = set(tensors)
        todo = list(seen)
        while todo:
            for i in users.get(todo.pop(), []):
                for o in g.node[i].output:
                    if o and o not in seen:
                        seen.add(o)
                        todo.append(o)
        return seen

    heads: dict[str, set[int]] = {}
    for u in sorted(regions.units):
        unit = g.node[u]
        after_other_unit = any(i in regions.units for i in ancestors(unit.input[-1:]))
        name = BOX
        if after_other_unit:
            outputs = reaches(unit.output)
            name = next((n for o, n in _HEAD_OUTPUTS if o in outputs), MASK)
        nodes = heads.setdefault(name, set())
        found = set(unit.output)
        for i in sorted(regions.feature_nodes):  # graph order: producers before readers
            if any(t in found for t in g.node[i].input):
                found.update(g.node[i].output)
                nodes.add(i)
    return heads


def matrix_macs(
    model: onnx.ModelProto, groups: dict[str, set[int]], side: int, proposals: int, detections: int
) -> dict[int, float]:
    """Multiply-accumulates of every Conv/ConvTranspose/Gemm/MatMul of the groups for one
    ``side`` x ``side`` input; RoI heads count ``proposals`` RoIs (box) or ``detections``
    (mask, keypoint), the most the graph feeds them. From ONNX shape inference; a node whose
    shape stays unknown counts 0."""
    import numpy as np
    from onnx import numpy_helper

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for i in fixed.graph.input:
        if i.name == contract.INPUT_IMAGES:
            for d, v in zip(i.type.tensor_type.shape.dim, (1, 3, side, side)):
                d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim
        ]
        for v in inferred.graph.value_info
    }
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    macs: dict[int, float] = {}
    for name, nodes in groups.items():
        rois = proposals if name == BOX else detections
        for i in nodes:
            node = model.graph.node[i]
            if node.op_type not in MATMUL_OPS or node.input[1] not in weights:
                continue
            w = weights[node.input[1]]
            shape = shapes.get(node.input[0] if node.op_type == "ConvTranspose" else node.output[0])
            if not shape:
                macs[i] = 0.0
                continue
            shape = [rois if (k == 0 and d == 0) else d for k, d in enumerate(shape)]
            macs[i] = float(np.prod(shape)) * _fan_in(node, w)
    return macs


def _fan_in(node: onnx.NodeProto, w: tuple[int, ...]) -> float:
    """MACs per element of the counted tensor: the output's (Conv, Gemm, MatMul) or, for
    ConvTranspose, the input's (weight [Cin, Cout/group, kH, kW])."""
    if node.op_type in ("Conv", "ConvTranspose"):  # Conv weight [Cout, Cin/group, kH, kW]
        n = 1
        for d in w[1:]:
            n *= d
        return float(n)
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
    return float(w[1] if node.op_type == "Gemm" and trans_b else w[0])  # K of [K, M] / [M, K]


def group_precisions(meta: dict[str, str]) -> dict[str, str]:
    """Group -> ``int8``/``fp16`` from a graph's metadata; empty when it records none (a graph
    made without ``--fp16-groups``: every group is of the graph's precision)."""
    text = meta.get(contract.META_PRECISION_GROUPS)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise MaskrtError(f"metadata {contract.META_PRECISION_GROUPS} is not JSON") from None
    if not isinstance(value, dict):
        raise MaskrtError(f"metadata {contract.META_PRECISION_GROUPS} is not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def parse_group_names(text: str | Iterable[str], available: Iterable[str]) -> list[str]:
    """``"box,mask"`` (or a list) -> the group names, checked against the graph's ``available``
    groups; ``backbone`` stands for every backbone stage. Raises a one-line MaskrtError."""
    have = list(available)
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        names = [h for h in have if h.startswith(BACKBONE)] if item == BACKBONE else [item]
        if not names or any(n not in have for n in names):
            raise MaskrtError(
                f"no group {item!r} in this graph; its groups are {', '.join(have)} "
                f"({BACKBONE} = every backbone stage)"
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise MaskrtError("--fp16-groups names no group")
    return chosen
