"""Which nodes of a deploy graph compute features, found structurally (never by node names).

Reduced precision (FP16 or INT8) is safe where a network computes *features*: the backbone, the
FPN and the heads' convolutions and fully connected layers. It is not safe where the graph computes
*coordinates and scores*: anchor generation, box decoding (``Exp``), clipping, proposal and
detection scoring, ``TopK``, ``NonMaxSuppression`` and the RoI coordinates fed to the RoIAlign
units. Those stay FP32 (the "FP32 islands").

The feature region is the forward closure of two kinds of seeds -- the graph input ``images`` and
the outputs of the ``maskrt::MultiScaleRoIAlign`` units (pooled features) -- through feature
operators, where a node joins only if *every* floating-point input is a feature tensor or a
constant. Anything that mixes in a coordinate (an anchor, a proposal, an image size) or that is
a scoring/decoding operator (``Exp``, ``Softmax``, ``Sigmoid``, ``TopK``...) stops the closure,
so the islands follow from the graph's data flow alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from maskrt import contract
from maskrt.plugins.contract import (
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    UNIT_DOMAIN,
    UNIT_OP_TYPE,
)

# (domain, op type) of the RoIAlign units: export's function node and the plugin nodes.
UNIT_NODES = frozenset(
    {(UNIT_DOMAIN, UNIT_OP_TYPE), (PLUGIN_DOMAIN, PLUGIN_NAME), (PLUGIN_DOMAIN, SINGLE_PLUGIN_NAME)}
)

# Operators that transform features without touching coordinates or scores.
FEATURE_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
        "Relu", "LeakyRelu", "HardSwish", "HardSigmoid", "Add", "Sub", "Mul", "Div",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Upsample", "Pad",
        "Reshape", "Flatten", "Transpose", "Concat", "Slice", "Split",
        "Squeeze", "Unsqueeze", "Identity", "Gather", "Shape", "Size",
    }
)  # fmt: skip

# Where TensorRT runs INT8: the inputs of these, inside the feature region.
MATMUL_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@dataclass
class Regions:
    """The feature region of a graph: node indices (graph order) and tensor names.

    ``feature_nodes``   indices of nodes that may run in reduced precision
    ``feature_tensors`` float tensors those nodes (and the seeds) produce
    ``units``           indices of the RoIAlign unit nodes (or their plugin replacements)
    ``constants``       names of initializers and Constant outputs
    """

    feature_nodes: set[int] = field(default_factory=set)
    feature_tensors: set[str] = field(default_factory=set)
    units: set[int] = field(default_factory=set)
    constants: set[str] = field(default_factory=set)


def is_unit(node: onnx.NodeProto) -> bool:
    """A RoIAlign unit: export's function node, or a plugin node that replaced it."""
    return (node.domain, node.op_type) in UNIT_NODES


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of all floating-point tensors, from (non-strict) shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    g = inferred.graph
    names = {t.name for t in g.initializer if t.data_type in _FLOATS}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type in _FLOATS:
            names.add(vi.name)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOATS:
                    names.add(node.output[0])
                if a.name in ("value_float", "value_floats"):
                    names.add(node.output[0])
    return names


def find_regions(model: onnx.ModelProto, floats: set[str] | None = None) -> Regions:
    """The feature region of a topologically sorted deploy graph (see the module docstring)."""
    floats = float_tensors(model) if floats is None else floats
    g = model.graph
    r = Regions()
    r.constants = constant_tensors(model)
    big = _beyond_fp16(model)
    r.feature_tensors = {i.name for i in g.input if i.name == contract.INPUT_IMAGES}
    for idx, node in enumerate(g.node):
        if is_unit(node):
            r.units.add(idx)
            r.feature_tensors.update(o for o in node.output if o in floats)
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in FEATURE_OPS:
            continue
        float_inputs = [t for t in node.input if t and t in floats]
        dynamic = [t for t in float_inputs if t not in r.constants]
        if not dynamic or not all(t in r.feature_tensors for t in dynamic):
            continue
        if any(t in big for t in float_inputs):
            continue  # e.g. padding scores with -inf: outside FP16, keep FP32
        r.feature_nodes.add(idx)
        r.feature_tensors.update(o for o in node.output if o in floats)
    return r


def _beyond_fp16(model: onnx.ModelProto) -> set[str]:
    """Float initializers and Constant outputs holding a value FP16 cannot represent."""
    limit = float(np.finfo(np.float16).max)

    def beyond(t: onnx.TensorProto) -> bool:
        if t.data_type != TensorProto.FLOAT or (t.data_location == TensorProto.EXTERNAL):
            return False
        a = numpy_helper.to_array(t)
        return bool(a.size) and not bool(np.all(np.isfinite(a) & (np.abs(a) <= limit)))

    names = {t.name for t in model.graph.initializer if beyond(t)}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and beyond(a.t):
                    names.add(node.output[0])
    return names


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and everything computed from them alone (e.g. the scale
    of a frozen batch norm, or a weight shared through ``Identity``): they fold at build time."""
    g = model.graph
    const = {t.name for t in g.initializer}
    for node in g.node:
        if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "Multinomial"):
            continue
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant" or (inputs and all(t in const for t in inputs)):
            const.update(node.output)
    return const


def consumers(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes that read it."""
    users: dict[str, list[int]] = defaultdict(list)
    for idx, node in enumerate(model.graph.node):
        for t in node.input:
            if t:
                users[t].append(idx)
    return users


def roi_head_tensors(model: onnx.ModelProto, regions: Regions) -> set[str]:
    """Feature tensors computed from pooled RoI features: the outputs of the RoIAlign units and
    everything the feature region derives from them (box, mask and keypoint heads)."""
    g = model.graph
    found = {o for idx in regions.units for o in g.node[idx].output}
    for idx in sorted(regions.feature_nodes):  # graph order: producers before readers
        node = g.node[idx]
        if any(t in found for t in node.input):
            found.update(o for o in node.output if o in regions.feature_tensors)
    return found


def prediction_nodes(model: onnx.ModelProto, regions: Regions) -> set[int]:
    """Indices of the last Conv/ConvTranspose/Gemm/MatMul on each path of the feature region:
    the layers that turn features into logits and box deltas (RPN objectness and deltas, box
    class scores and deltas, mask logits, keypoint heatmaps). Found by data flow: no other
    matrix operator is reachable from their outputs inside the feature region."""
    g = model.graph
    users = consumers(model)
    reaches: dict[int, bool] = {}  # node -> a matrix op lies strictly downstream

    def downstream_matmul(idx: int) -> bool:
        if idx not in reaches:
            found = False
            for out in g.node[idx].output:
                for user in users.get(out, []):
                    if user in regions.feature_nodes and (
                        g.node[user].op_type in MATMUL_OPS or downstream_matmul(user)
                    ):
                        found = True
            reaches[idx] = found
        return reaches[idx]

    # Walk in reverse graph order so that the recursion above stays shallow.
    for idx in sorted(regions.feature_nodes, reverse=True):
        downstream_matmul(idx)
    return {
        idx
        for idx in regions.feature_nodes
        if g.node[idx].op_type in MATMUL_OPS and not reaches[idx]
    }


def int8_nodes(
    model: onnx.ModelProto, regions: Regions, keep_predictions_float: bool = True
) -> list[str]:
    """Names of the nodes to quantize: Conv/ConvTranspose/Gemm/MatMul of the feature region and
    the Adds that join two feature tensors (residual and FPN top-down sums), which TensorRT fuses
    into the preceding convolution.

    With ``keep_predictions_float`` the prediction layers (:func:`prediction_nodes`) stay in
    float: their outputs are decoded into coordinates and scores, where an INT8 step of a box
    delta is a visible fraction of a pixel-accurate box, and they cost little compute."""
    skip = prediction_nodes(model, regions) if keep_predictions_float else set()
    names = []
    for idx in sorted(regions.feature_nodes - skip):
        node = model.graph.node[idx]
        if node.op_type in MATMUL_OPS:
            names.append(node.name)
        elif node.op_type == "Add":
            dynamic = [t for t in node.input if t not in regions.constants]
            if len(dynamic) == 2:
                names.append(node.name)
    return names


def name_nodes(model: onnx.ModelProto, prefix: str = "node") -> None:
    """Give every unnamed (or twice-named) node a unique name (ORT's tools select nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{prefix}_{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
        seen.add(node.name)


def fold_identity_constants(model: onnx.ModelProto) -> int:
    """Read initializers directly where the exporter routed them through ``Identity`` (shared
    weights), so quantizers see them as weights; returns how many Identities were removed."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return 0
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        for k, t in enumerate(node.input):
            node.input[k] = alias.get(t, t)
    del g.node[:]
    g.node.extend(keep)
    return len(alias)
