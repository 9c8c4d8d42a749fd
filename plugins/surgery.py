"""Graph surgery: swap each RoIAlign unit of an ONNX graph for one RoIAlign plugin node.

Three shapes of RoIAlign are recognised, all by graph structure (never by node names):

* ``maskrt::MultiScaleRoIAlign`` -- the unit node ``maskrt export`` writes (inputs: L feature
  maps ``[B, C, H_l, W_l]`` then rois ``[B, N, 4]``; output ``[B, N, C, P, P]``). It becomes the
  multi-level plugin node with the same inputs and output.
* torchvision's traced ``MultiScaleRoIAlign`` (``torch.onnx.export`` of a vanilla model): one
  ``RoiAlign`` per level over ``rois[levels == l]`` (rois ``[K, 5]`` = batch index column and
  boxes), merged by a chain of ``ScatterElements``. When all RoIs belong to image 0 and the level
  subgraph computes torchvision's LevelMapper, the whole pattern becomes
  ``Unsqueeze(boxes) -> multi-level plugin -> Squeeze``.
* any other (lone) ONNX ``RoiAlign`` with ``mode="avg"`` becomes the single-level plugin node.

The plugin node's op type and attributes come from :mod:`maskrt.plugins.contract`. Its ONNX
domain is ``ai.onnx.contrib``: TensorRT's ONNX parser finds a node with a ``plugin_namespace``
attribute in its plugin registry by op type, ``plugin_version`` and ``plugin_namespace`` (the
domain plays no part), and ONNX Runtime runs the same file when the plugin's CPU twin is
registered as an onnxruntime-extensions custom op, which lives in that domain.

Anything else that looks like a RoIAlign is left alone and listed in the report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from maskrt.contract import META_SURGERED
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, check_writable
from maskrt.plugins.contract import (
    PLUGIN_NAME,
    SINGLE_PLUGIN_NAME,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)

# The domain of ONNX Runtime custom ops registered through onnxruntime-extensions.
PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_DOMAIN_VERSION = 1
PLUGIN_OP_TYPES = (PLUGIN_NAME, SINGLE_PLUGIN_NAME)

# The unit node ``maskrt export`` writes. Imported from export when it is importable (it pulls in
# torch); the strings are the same, restated only as the fallback.
try:
    from maskrt.export.ops import DOMAIN as UNIT_DOMAIN
    from maskrt.export.ops import MULTISCALE_ROI_ALIGN as UNIT_OP_TYPE
except ImportError:  # pragma: no cover - export always ships with maskrt
    UNIT_DOMAIN, UNIT_OP_TYPE = "maskrt", "MultiScaleRoIAlign"

_ONNX_ROI_ALIGN = "RoiAlign"
_DEFAULT_DOMAINS = ("", "ai.onnx")
# How far back from a RoIAlign input to look for the level comparison (NonZero, Transpose, ...).
_LEVEL_SEARCH_DEPTH = 10
_INDEX_OPS = (
    "NonZero",
    "Transpose",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Expand",
    "Cast",
    "Flatten",
    "Gather",
    "Slice",
)
# An IR version every supported ONNX Runtime loads (1.31 refuses > 13).
_ORT_IR_VERSION = 10


@dataclass
class SurgeryReport:
    """What one surgery did; :meth:`lines` is what the CLI prints."""

    units: int = 0  # maskrt::MultiScaleRoIAlign nodes replaced
    torchvision_units: int = 0  # torchvision multi-level patterns fused into one plugin node
    single_level: int = 0  # lone RoiAlign nodes replaced by the single-level plugin
    nodes_before: int = 0
    nodes_after: int = 0
    already_surgered: bool = False
    unrecognised: list[str] = field(default_factory=list)

    @property
    def replaced(self) -> int:
        return self.units + self.torchvision_units + self.single_level

    def lines(self) -> list[str]:
        if self.already_surgered:
            head = "already surgered: nothing to replace, graph unchanged"
        else:
            head = (
                f"replaced {self.replaced} RoIAlign unit(s): {self.units} maskrt "
                f"MultiScaleRoIAlign, {self.torchvision_units} torchvision multi-level, "
                f"{self.single_level} single-level"
            )
        out = [head, f"nodes: {self.nodes_before} -> {self.nodes_after}"]
        out += [f"left unrecognised: {u}" for u in self.unrecognised]
        return out


# ----------------------------------------------------------------------------------------------
# small graph helpers


def _const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        value = t.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def _producer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    """The node that makes ``t`` (of type ``op`` when given), else None."""
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if op is not None and (node.op != op or node.domain not in _DEFAULT_DOMAINS + (None,)):
        return None
    return node


def _skip_casts(t: gs.Tensor) -> gs.Tensor:
    while (n := _producer(t, "Cast")) is not None:
        t = n.inputs[0]
    return t


def _skip_single_concat(t: gs.Tensor) -> gs.Tensor:
    """torch exports ``cat([x])`` as a one-input Concat: see through it."""
    while (n := _producer(t, "Concat")) is not None and len(n.inputs) == 1:
        t = n.inputs[0]
    return t


def _is_const(t: gs.Tensor, expected: Sequence[float]) -> bool:
    v = _const_value(t)
    return v is not None and v.size == len(expected) and np.allclose(v.ravel(), expected)


def _gather_cols(t: gs.Tensor, cols: Sequence[int]) -> gs.Tensor | None:
    """``x`` when ``t = Gather(x, cols, axis=1)``."""
    n = _producer(t, "Gather")
    if n is None or n.attrs.get("axis", 0) != 1 or not _is_const(n.inputs[1], cols):
        return None
    return n.inputs[0]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _opset(graph: gs.Graph) -> int:
    return int(graph.opset)


# ----------------------------------------------------------------------------------------------
# maskrt::MultiScaleRoIAlign


def _replace_units(graph: gs.Graph, report: SurgeryReport) -> None:
    for node in list(graph.nodes):
        if node.domain != UNIT_DOMAIN or node.op != UNIT_OP_TYPE:
            continue
        try:
            fields = MultiLevelRoIAlignFields.from_onnx_attributes(node.attrs)
        except MaskrtError as e:
            report.unrecognised.append(f"{UNIT_DOMAIN}::{UNIT_OP_TYPE} {node.name!r}: {e}")
            continue
        if len(node.inputs) != len(fields.spatial_scales) + 1 or len(node.outputs) != 1:
            report.unrecognised.append(
                f"{UNIT_DOMAIN}::{UNIT_OP_TYPE} {node.name!r}: {len(node.inputs)} inputs for "
                f"{len(fields.spatial_scales)} levels"
            )
            continue
        features, rois = node.inputs[:-1], node.inputs[-1]
        _set_plugin(node, PLUGIN_NAME, fields.to_onnx_attributes())
        _set_multilevel_output(node.outputs[0], features[0], rois, fields.output_size)
        report.units += 1


def _set_plugin(node: gs.Node, op: str, attrs: dict[str, Any]) -> None:
    node.op = op
    node.domain = PLUGIN_DOMAIN
    node.attrs = dict(attrs)


def _dim(t: gs.Tensor, i: int, fallback: str) -> int | str:
    shape = t.shape
    if shape is not None and len(shape) > i and shape[i] not in (None, "", -1):
        return shape[i]
    return fallback


def _set_multilevel_output(out: gs.Tensor, feature: gs.Tensor, rois: gs.Tensor, p: int) -> None:
    """Give the plugin's output its shape ``[B, N, C, P, P]`` explicitly: shape inference has no
    schema for the plugin op."""
    base = out.name.replace("/", "_")
    out.dtype = feature.dtype if feature.dtype is not None else np.float32
    out.shape = [
        _dim(rois, 0, f"{base}_B"),
        _dim(rois, 1, f"{base}_N"),
        _dim(feature, 1, f"{base}_C"),
        p,
        p,
    ]


# ----------------------------------------------------------------------------------------------
# torchvision's traced MultiScaleRoIAlign


@dataclass
class _TorchvisionUnit:
    scatters: list[gs.Node]  # the ScatterElements chain, level 0 first
    roi_aligns: list[gs.Node]  # one RoiAlign per level
    features: list[gs.Tensor]
    boxes: gs.Tensor  # [K, 4]
    levels: gs.Tensor  # [K] level index of each RoI
    fields: MultiLevelRoIAlignFields


def _scatter_chains(graph: gs.Graph) -> list[list[gs.Node]]:
    """Chains ``ScatterElements(...ScatterElements(data, i_0, u_0)..., i_n, u_n)`` on axis 0, each
    listed from the first scatter to the last."""

    def is_scatter(n: gs.Node | None) -> bool:
        return (
            n is not None
            and n.op == "ScatterElements"
            and n.domain in _DEFAULT_DOMAINS + (None,)
            and n.attrs.get("axis", 0) == 0
            and _text(n.attrs.get("reduction", "none")) == "none"
        )

    chains = []
    for node in graph.nodes:
        if not is_scatter(node):
            continue
        # the chain's last link: its output does not feed another link's data input
        if any(is_scatter(c) and c.inputs[0] is node.outputs[0] for c in node.outputs[0].outputs):
            continue
        chain = [node]
        while is_scatter(prev := _producer(chain[-1].inputs[0])):
            assert prev is not None
            chain.append(prev)
        chains.append(chain[::-1])
    return chains


def _level_equal(t: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """``(levels, l)`` of the one ``Equal(levels, l)`` that the indices ``t`` are taken from
    (through NonZero, Transpose, Split, Squeeze, Reshape, Expand)."""
    found: list[gs.Node] = []
    frontier, seen = [t], set()
    for _ in range(_LEVEL_SEARCH_DEPTH):
        nxt = []
        for x in frontier:
            n = _producer(x)
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if n.op == "Equal":
                found.append(n)
            elif n.op in _INDEX_OPS:
                nxt.append(n.inputs[0])
        frontier = nxt
    if len(found) != 1:
        return None
    a, b = found[0].inputs
    for levels, const in ((a, b), (b, a)):
        v = _const_value(const)
        if v is not None and v.size == 1 and _const_value(levels) is None:
            return levels, int(v.ravel()[0])
    return None


def _pool_params(ra: gs.Node) -> tuple[int, int, int]:
    a = ra.attrs
    return (
        int(a.get("output_height", 1)),
        int(a.get("output_width", 1)),
        int(a.get("sampling_ratio", 0)),
    )


def _match_torchvision(graph: gs.Graph, chain: list[gs.Node]) -> _TorchvisionUnit | str:
    """The unit a scatter chain merges, or why it is not a fusable torchvision unit."""
    roi_aligns, features, scales = [], [], []
    rois_all: gs.Tensor | None = None
    levels: gs.Tensor | None = None
    for level, scatter in enumerate(chain):
        ra = _producer(_skip_casts(scatter.inputs[2]), _ONNX_ROI_ALIGN)
        if ra is None:
            return "a ScatterElements chain whose updates are not RoiAlign outputs"
        attrs = ra.attrs
        if _text(attrs.get("mode", "avg")) != "avg":
            return f"RoiAlign {ra.name!r} with mode={_text(attrs['mode'])}"
        ctm = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        if _opset(graph) < 16:
            ctm = "output_half_pixel"
        if ctm != "output_half_pixel":  # torchvision's MultiScaleRoIAlign has aligned=False
            return f"RoiAlign {ra.name!r} with coordinate_transformation_mode={ctm}"
        # rois_l = rois_all[idx_l][:, 1:5], batch_l = rois_all[idx_l][:, 0]
        picked = _gather_cols(ra.inputs[1], [1, 2, 3, 4])
        batch = _producer(_skip_casts(ra.inputs[2]), "Squeeze")
        if picked is None or batch is None or _gather_cols(batch.inputs[0], [0]) is not picked:
            return f"RoiAlign {ra.name!r} whose rois are not columns of a [K, 5] RoI tensor"
        sel = _producer(picked, "Gather")
        if sel is None or sel.attrs.get("axis", 0) != 0:
            return f"RoiAlign {ra.name!r} whose RoIs are not selected by level"
        if rois_all is None:
            rois_all = sel.inputs[0]
        elif sel.inputs[0] is not rois_all:
            return "levels pooling different RoI tensors"
        for idx in (sel.inputs[1], scatter.inputs[1]):
            eq = _level_equal(idx)
            if eq is None or eq[1] != level or (levels is not None and eq[0] is not levels):
                return f"RoiAlign {ra.name!r}: level indices not taken from levels == {level}"
            levels = eq[0]
        roi_aligns.append(ra)
        features.append(ra.inputs[0])
        scales.append(float(attrs.get("spatial_scale", 1.0)))
        if _pool_params(ra) != _pool_params(roi_aligns[0]) or attrs.get(
            "output_height", 1
        ) != attrs.get("output_width", 1):
            return f"RoiAlign {ra.name!r}: levels disagree on output size or sampling ratio"
    assert rois_all is not None and levels is not None

    # rois_all = cat([zeros [K, 1], boxes [K, 4]], dim=1): every RoI belongs to image 0.
    cat = _producer(rois_all, "Concat")
    if cat is None or len(cat.inputs) != 2 or cat.attrs.get("axis") not in (1, -1):
        return "RoIs not built as cat([batch_index, boxes], 1)"
    zeros, boxes = _skip_single_concat(cat.inputs[0]), _skip_single_concat(cat.inputs[1])
    fill = _producer(zeros, "ConstantOfShape")
    if fill is None:
        return "RoI batch indices that are not all zero (more than one image per batch)"
    fill_value = fill.attrs.get("value")
    if fill_value is not None and np.any(np.asarray(fill_value.values) != 0):
        return "RoI batch indices that are not all zero (more than one image per batch)"

    if any(s <= 0 or not math.log2(s).is_integer() for s in scales) or scales != sorted(
        scales, reverse=True
    ):
        return f"spatial scales {scales} are not descending powers of two"
    p = int(roi_aligns[0].attrs.get("output_height", 1))
    fields = MultiLevelRoIAlignFields(
        output_size=p,
        sampling_ratio=int(roi_aligns[0].attrs.get("sampling_ratio", 0)),
        aligned=0,
        spatial_scales=tuple(scales),
    )
    why = _check_level_mapper(graph, boxes, levels, fields)
    if why:
        return why
    return _TorchvisionUnit(chain, roi_aligns, features, boxes, levels, fields)


def _level_subgraph(boxes: gs.Tensor, levels: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``levels`` from ``boxes`` and constants only (None if there are
    other inputs or too many nodes)."""
    nodes: dict[int, gs.Node] = {}
    stack = [levels]
    while stack:
        t = stack.pop()
        if t is boxes or isinstance(t, gs.Constant):
            continue
        n = _producer(t)
        if n is None:
            return None  # a graph input other than boxes
        if id(n) in nodes:
            continue
        if len(nodes) > 200 or n.op in (PLUGIN_OP_TYPES + (_ONNX_ROI_ALIGN,)):
            return None
        nodes[id(n)] = n
        stack.extend(n.inputs)
    return list(nodes.values())


def _probe_boxes(fields: MultiLevelRoIAlignFields) -> np.ndarray:
    """Boxes whose sides sit inside, exactly on, and beyond every FPN level boundary."""
    sizes = []
    for j in range(-6, 7):
        base = fields.canonical_scale * 2.0**j
        sizes += [base * 0.999, base, base * 1.001, base * 1.5]
    side = np.asarray(sizes, dtype=np.float32)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, 50, size=side.shape).astype(np.float32)
    return np.stack([x0, x0, x0 + side, x0 + side], axis=1)


def _expected_levels(boxes: np.ndarray, fields: MultiLevelRoIAlignFields) -> np.ndarray:
    """torchvision's LevelMapper in float32: the plugin's level rule."""
    k = [-round(math.log2(s)) for s in fields.spatial_scales]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = np.sqrt(area)
    lg = np.log(s / np.float32(fields.canonical_scale)) / np.float32(math.log(2.0))
    lvl = np.floor(np.float32(fields.canonical_level) + lg + np.float32(1e-6))
    return (np.clip(lvl, k[0], k[-1]).astype(np.int64) - k[0]).astype(np.int64)


def _check_level_mapper(
    graph: gs.Graph, boxes: gs.Tensor, levels: gs.Tensor, fields: MultiLevelRoIAlignFields
) -> str | None:
    """None when the level subgraph assigns probe boxes to the levels the plugin would.

    The level subgraph is cut out and run in ONNX Runtime, so any export of torchvision's
    LevelMapper (whatever its op sequence) is accepted, and nothing else is.
    """
    import onnxruntime as ort

    nodes = _level_subgraph(boxes, levels)
    if nodes is None:
        return "levels not computed from the boxes alone"
    probe_in = gs.Variable("probe_boxes", dtype=np.float32, shape=["K", 4])
    probe_out = gs.Variable("probe_levels", dtype=None, shape=None)
    copies = []
    mapping = {id(boxes): probe_in, id(levels): probe_out}
    for n in nodes:
        for t in n.outputs:
            mapping.setdefault(id(t), gs.Variable(f"probe/{t.name}"))
    for n in nodes:
        inputs = [mapping.get(id(t), t) for t in n.inputs]
        outputs = [mapping[id(t)] for t in n.outputs]
        copies.append(gs.Node(n.op, f"probe/{n.name}", dict(n.attrs), inputs, outputs, n.domain))
    try:
        sub = gs.Graph(nodes=copies, inputs=[probe_in], outputs=[probe_out], opset=_opset(graph))
        model = gs.export_onnx(sub.toposort(), do_type_check=False)
        model.ir_version = _ORT_IR_VERSION
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        probe = _probe_boxes(fields)
        got = np.asarray(sess.run(None, {"probe_boxes": probe})[0]).reshape(-1)
    except Exception as e:  # noqa: BLE001 - any failure means "not recognised"
        return f"level subgraph could not be evaluated ({type(e).__name__}: {str(e)[:300]})"
    finally:
        # the copies share constant tensors with the real graph: unhook them again
        for c in copies:
            c.inputs.clear()
            c.outputs.clear()
    if not np.array_equal(got.astype(np.int64), _expected_levels(probe, fields)):
        return "a level assignment that differs from torchvision's LevelMapper"
    return None


def _fuse_torchvision(graph: gs.Graph, unit: _TorchvisionUnit) -> None:
    """``out [K, C, P, P] = Squeeze(plugin(features, Unsqueeze(boxes, 0)), 0)``."""
    last = unit.scatters[-1]
    out = last.outputs[0]
    last.outputs.clear()  # the old chain is dead now; cleanup removes it
    base = out.name
    axes = gs.Constant(f"{base}/maskrt_axis0", np.array([0], dtype=np.int64))
    rois = gs.Variable(
        f"{base}/maskrt_rois", dtype=np.float32, shape=[1, _dim(unit.boxes, 0, "K"), 4]
    )
    pooled = gs.Variable(f"{base}/maskrt_pooled")
    _set_multilevel_output(pooled, unit.features[0], rois, unit.fields.output_size)
    graph.nodes += [
        gs.Node("Unsqueeze", f"{base}/maskrt_unsqueeze", inputs=[unit.boxes, axes], outputs=[rois]),
        gs.Node(
            PLUGIN_NAME,
            f"{base}/maskrt_roialign",
            attrs=unit.fields.to_onnx_attributes(),
            inputs=list(unit.features) + [rois],
            outputs=[pooled],
            domain=PLUGIN_DOMAIN,
        ),
        gs.Node("Squeeze", f"{base}/maskrt_squeeze", inputs=[pooled, axes], outputs=[out]),
    ]


def _replace_torchvision(graph: gs.Graph, report: SurgeryReport) -> None:
    for chain in _scatter_chains(graph):
        if not any(_producer(_skip_casts(s.inputs[2]), _ONNX_ROI_ALIGN) for s in chain):
            continue  # an unrelated scatter
        unit = _match_torchvision(graph, chain)
        if isinstance(unit, str):
            report.unrecognised.append(f"multi-level RoiAlign pattern not fused: {unit}")
            continue
        _fuse_torchvision(graph, unit)
        report.torchvision_units += 1
    graph.cleanup()


# ----------------------------------------------------------------------------------------------
# lone RoiAlign


def _replace_single(graph: gs.Graph, report: SurgeryReport) -> None:
    for node in graph.nodes:
        if node.op != _ONNX_ROI_ALIGN or node.domain not in _DEFAULT_DOMAINS + (None,):
            continue
        attrs = dict(node.attrs)
        if _opset(graph) < 16:  # RoiAlign-10 has no attribute and pools like output_half_pixel
            attrs["coordinate_transformation_mode"] = "output_half_pixel"
        try:
            fields = SingleRoIAlignFields.from_onnx_roialign(attrs)
        except MaskrtError as e:
            report.unrecognised.append(f"RoiAlign {node.name!r}: {e}")
            continue
        if len(node.inputs) != 3:
            report.unrecognised.append(f"RoiAlign {node.name!r} with {len(node.inputs)} inputs")
            continue
        x, rois = node.inputs[0], node.inputs[1]
        _set_plugin(node, SINGLE_PLUGIN_NAME, fields.to_onnx_attributes())
        out = node.outputs[0]
        base = out.name.replace("/", "_")
        out.dtype = x.dtype if x.dtype is not None else np.float32
        out.shape = [
            _dim(rois, 0, f"{base}_R"),
            _dim(x, 1, f"{base}_C"),
            fields.output_height,
            fields.output_width,
        ]
        report.single_level += 1


# ----------------------------------------------------------------------------------------------
# the pass


def _has_plugin_nodes(model: onnx.ModelProto) -> bool:
    return any(n.op_type in PLUGIN_OP_TYPES for n in model.graph.node)


def _count_roi_align(model: onnx.ModelProto) -> int:
    def walk(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
        for n in graph.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                for g in a.graphs:
                    yield from walk(g)

    return sum(
        (n.op_type == _ONNX_ROI_ALIGN and n.domain in _DEFAULT_DOMAINS)
        or (n.op_type == UNIT_OP_TYPE and n.domain == UNIT_DOMAIN)
        for n in walk(model.graph)
    )


def _finish_model(out: onnx.ModelProto, src: onnx.ModelProto) -> onnx.ModelProto:
    """Carry over what graphsurgeon does not keep, drop unused functions and domains, mark it."""
    out.ir_version = src.ir_version
    out.producer_name = src.producer_name
    out.producer_version = src.producer_version
    out.domain = src.domain
    out.model_version = src.model_version
    out.doc_string = src.doc_string
    used_ops = {(n.domain, n.op_type) for n in out.graph.node}
    # a function may call others: keep everything reachable from the graph
    by_key = {(f.domain, f.name): f for f in src.functions}
    keep: dict[tuple[str, str], onnx.FunctionProto] = {}
    stack = [k for k in used_ops if k in by_key]
    while stack:
        key = stack.pop()
        if key in keep:
            continue
        keep[key] = by_key[key]
        stack += [
            (n.domain, n.op_type) for n in by_key[key].node if (n.domain, n.op_type) in by_key
        ]
    del out.functions[:]
    out.functions.extend(f for f in src.functions if (f.domain, f.name) in keep)

    used_domains = {d for d, _ in used_ops} | {f.domain for f in out.functions}
    used_domains |= {i.domain for f in out.functions for i in f.opset_import}
    opsets = {i.domain: i.version for i in src.opset_import}
    opsets.setdefault(PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION)
    del out.opset_import[:]
    for domain, version in opsets.items():
        if domain in ("", "ai.onnx") or domain in used_domains:
            out.opset_import.append(onnx.helper.make_opsetid(domain, version))

    meta = {p.key: p.value for p in src.metadata_props}
    meta[META_SURGERED] = "1"
    onnx.helper.set_model_props(out, meta)
    return out


def surgery(
    model: onnx.ModelProto, progress: bool = False
) -> tuple[onnx.ModelProto, SurgeryReport]:
    """Replace every recognised RoIAlign unit of ``model`` with a plugin node.

    Returns the new model (``model`` is not changed) and a report. The graph's inputs and
    outputs keep their names, types and shapes; constants are folded, dead nodes and unused
    model-local functions removed, the nodes sorted topologically and shapes inferred.

    ``progress`` shows a progress bar over the steps (matching, cleanup, shape inference).

    Raises:
        MaskrtError: the graph has no RoIAlign of any kind (and no plugin node either).
    """
    report = SurgeryReport(nodes_before=len(model.graph.node))
    if _count_roi_align(model) == 0:
        if _has_plugin_nodes(model):
            # surgery's own output: leave it exactly as it is (idempotence)
            report.already_surgered = True
            report.nodes_after = report.nodes_before
            return model, report
        raise MaskrtError("the graph has no RoIAlign (neither maskrt units nor ONNX RoiAlign)")

    from tqdm import tqdm

    bar = tqdm(total=4, desc="surgery", unit="step", disable=not progress, leave=False)
    original = model
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only improve the plugin outputs' declared shapes
        pass
    graph = gs.import_onnx(model)
    io_before = _io_signature(graph)
    bar.update()

    _replace_units(graph, report)
    _replace_torchvision(graph, report)
    _replace_single(graph, report)
    bar.update()

    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _drop_unused_functions(graph)
    _fold_constants(graph)
    if _io_signature(graph) != io_before:  # pragma: no cover - a bug, not a user error
        raise AssertionError("surgery changed the graph's inputs or outputs")
    bar.update()

    out = gs.export_onnx(graph, do_type_check=False)
    out = _finish_model(out, original)
    out = onnx.shape_inference.infer_shapes(out)
    _restore_io(out, original)
    bar.update()
    bar.close()
    report.nodes_after = len(out.graph.node)
    # the passes report what they skip at the top level; If/Loop/Scan bodies are not visited
    top = sum(
        (n.op_type == _ONNX_ROI_ALIGN and n.domain in _DEFAULT_DOMAINS)
        or (n.domain, n.op_type) == (UNIT_DOMAIN, UNIT_OP_TYPE)
        for n in out.graph.node
    )
    if nested := _count_roi_align(out) - top:
        report.unrecognised.append(f"{nested} RoIAlign node(s) inside If/Loop/Scan bodies")
    return out, report


def _subgraphs(graph: gs.Graph, functions: bool = True) -> Iterable[gs.Graph]:
    """``graph``, its model-local functions and every If/Loop/Scan body below them."""
    yield graph
    if functions:  # a Function's ``functions`` is the model's list again: visit it once
        for fn in graph.functions:
            yield from _subgraphs(fn, functions=False)
    for node in graph.nodes:
        for value in node.attrs.values():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, gs.Graph):
                    yield from _subgraphs(v, functions=False)


def _drop_unused_functions(graph: gs.Graph) -> None:
    """Forget model-local functions nothing calls any more (the replaced units' definitions)."""
    by_key = {(f.domain, f.name): f for f in graph.functions}
    used: set[tuple[str, str]] = set()
    stack = [(n.domain or "", n.op) for n in graph.nodes]
    while stack:
        key = stack.pop()
        if key in by_key and key not in used:
            used.add(key)
            stack += [(n.domain or "", n.op) for n in by_key[key].nodes]
    graph.functions = [f for f in graph.functions if (f.domain, f.name) in used]


def _fold_constants(graph: gs.Graph) -> None:
    """graphsurgeon's constant folding, which evaluates in ONNX Runtime: give every (sub)graph an
    IR version ONNX Runtime accepts while it runs (subgraphs have none of their own)."""
    import onnxruntime as ort

    saved = graph.ir_version
    ir = min(saved or _ORT_IR_VERSION, _ORT_IR_VERSION)
    for g in _subgraphs(graph):
        g.ir_version = ir
    log_level = gs.logger.G_LOGGER.severity
    # a folded graph warns once per node it cannot simplify: errors only, as in a normal session
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    ort.set_default_logger_severity(3)
    try:
        graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default
        gs.logger.G_LOGGER.severity = log_level
        for g in _subgraphs(graph):
            g.ir_version = None
        graph.ir_version = saved


def _restore_io(out: onnx.ModelProto, src: onnx.ModelProto) -> None:
    """Declare the inputs and outputs exactly as ``src`` does (folding and shape inference may
    have refined their shapes)."""
    for declared, fresh in (
        (src.graph.input, out.graph.input),
        (src.graph.output, out.graph.output),
    ):
        if [v.name for v in declared] == [v.name for v in fresh]:
            del fresh[:]
            fresh.extend(declared)


def _io_signature(graph: gs.Graph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(t.name for t in graph.inputs), tuple(t.name for t in graph.outputs)


# ----------------------------------------------------------------------------------------------
# files


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file (external data included) or raise a one-line MaskrtError."""
    p = Path(path)
    if not p.is_file():
        raise MaskrtError(f"{p}: no such file")
    try:
        model = onnx.load(str(p))
    except DecodeError:
        raise MaskrtError(f"{p} is not an ONNX model, or it is truncated") from None
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise a variety of errors
        raise MaskrtError(f"{p} is not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise MaskrtError(f"{p} is not an ONNX model with a graph (empty or truncated file)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MaskrtError(f"{p} is not a valid ONNX model: {first}") from e
    return model


def surgery_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    force: bool = False,
    progress: bool = False,
) -> SurgeryReport:
    """``maskrt surgery``: read ``src``, replace its RoIAlign units, write ``dst`` atomically."""
    target = check_writable(dst, force)
    model = load_model(src)
    try:
        out, report = surgery(model, progress=progress)
    except MaskrtError as e:
        raise MaskrtError(f"{src}: {e}") from None
    data = out.SerializeToString()
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return report
