"""torchvision's ``MultiScaleRoIAlign`` as plain ``torch.onnx.export`` traces it -> one
multi-level plugin node.

The traced pattern: one ``RoiAlign`` per level over ``rois[levels == l]`` (rois ``[K, 5]`` = a
batch index column and boxes), merged by a chain of ``ScatterElements``. When all RoIs belong to
image 0 and the level subgraph computes torchvision's LevelMapper (checked by running it in ONNX
Runtime on probe boxes), the whole pattern becomes ``Unsqueeze(boxes) -> plugin -> Squeeze``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.onnxio import IR_VERSION
from maskrt.plugins.contract import PLUGIN_DOMAIN, PLUGIN_NAME, MultiLevelRoIAlignFields

from .graph import (
    ONNX_ROI_ALIGN,
    PLUGIN_OP_TYPES,
    axes_node,
    const_value,
    dim,
    is_onnx_op,
    opset,
    producer,
    roialign_attrs,
    set_multilevel_output,
    skip_casts,
    text,
)
from .report import SurgeryReport

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


@dataclass
class _TorchvisionUnit:
    scatters: list[gs.Node]  # the ScatterElements chain, level 0 first
    roi_aligns: list[gs.Node]  # one RoiAlign per level
    features: list[gs.Tensor]
    boxes: gs.Tensor  # [K, 4]
    levels: gs.Tensor  # [K] level index of each RoI
    fields: MultiLevelRoIAlignFields


def replace_torchvision(graph: gs.Graph, report: SurgeryReport) -> None:
    """Fuse every traced torchvision multi-level RoIAlign of ``graph`` into one plugin node;
    report the patterns it cannot fuse (their RoiAlign nodes stay, for the single-level pass)."""
    for chain in _scatter_chains(graph):
        if not any(producer(skip_casts(s.inputs[2]), ONNX_ROI_ALIGN) for s in chain):
            continue  # an unrelated scatter
        unit = _match(graph, chain)
        if isinstance(unit, str):
            report.unrecognised.append(f"multi-level RoiAlign pattern not fused: {unit}")
            continue
        _fuse(graph, unit)
        report.torchvision_units += 1
    graph.cleanup()


# ----------------------------------------------------------------------------------------------
# matching


def _skip_single_concat(t: gs.Tensor) -> gs.Tensor:
    """torch exports ``cat([x])`` as a one-input Concat: see through it."""
    while (n := producer(t, "Concat")) is not None and len(n.inputs) == 1:
        t = n.inputs[0]
    return t


def _is_const(t: gs.Tensor, expected: Sequence[float]) -> bool:
    v = const_value(t)
    return v is not None and v.size == len(expected) and np.allclose(v.ravel(), expected)


def _gather_cols(t: gs.Tensor, cols: Sequence[int]) -> gs.Tensor | None:
    """``x`` when ``t = Gather(x, cols, axis=1)``."""
    n = producer(t, "Gather")
    if n is None or n.attrs.get("axis", 0) != 1 or not _is_const(n.inputs[1], cols):
        return None
    return n.inputs[0]


def _scatter_chains(graph: gs.Graph) -> list[list[gs.Node]]:
    """Chains ``ScatterElements(...ScatterElements(data, i_0, u_0)..., i_n, u_n)`` on axis 0, each
    listed from the first scatter to the last."""

    def is_scatter(n: gs.Node | None) -> bool:
        return (
            n is not None
            and is_onnx_op(n, "ScatterElements")
            and n.attrs.get("axis", 0) == 0
            and text(n.attrs.get("reduction", "none")) == "none"
        )

    chains = []
    for node in graph.nodes:
        if not is_scatter(node):
            continue
        # the chain's last link: its output does not feed another link's data input
        if any(is_scatter(c) and c.inputs[0] is node.outputs[0] for c in node.outputs[0].outputs):
            continue
        chain = [node]
        while is_scatter(prev := producer(chain[-1].inputs[0])):
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
            n = producer(x)
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
        v = const_value(const)
        if v is not None and v.size == 1 and const_value(levels) is None:
            return levels, int(v.ravel()[0])
    return None


def _pool_params(ra: gs.Node) -> tuple[int, int, int]:
    a = ra.attrs
    return (
        int(a.get("output_height", 1)),
        int(a.get("output_width", 1)),
        int(a.get("sampling_ratio", 0)),
    )


def _match(graph: gs.Graph, chain: list[gs.Node]) -> _TorchvisionUnit | str:
    """The unit a scatter chain merges, or why it is not a fusable torchvision unit."""
    roi_aligns, features, scales = [], [], []
    rois_all: gs.Tensor | None = None
    levels: gs.Tensor | None = None
    for level, scatter in enumerate(chain):
        ra = producer(skip_casts(scatter.inputs[2]), ONNX_ROI_ALIGN)
        if ra is None:
            return "a ScatterElements chain whose updates are not RoiAlign outputs"
        attrs = roialign_attrs(graph, ra)
        if text(attrs.get("mode", "avg")) != "avg":
            return f"RoiAlign {ra.name!r} with mode={text(attrs['mode'])}"
        ctm = text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        if ctm != "output_half_pixel":  # torchvision's MultiScaleRoIAlign has aligned=False
            return f"RoiAlign {ra.name!r} with coordinate_transformation_mode={ctm}"
        # rois_l = rois_all[idx_l][:, 1:5], batch_l = rois_all[idx_l][:, 0]
        picked = _gather_cols(ra.inputs[1], [1, 2, 3, 4])
        batch = producer(skip_casts(ra.inputs[2]), "Squeeze")
        if picked is None or batch is None or _gather_cols(batch.inputs[0], [0]) is not picked:
            return f"RoiAlign {ra.name!r} whose rois are not columns of a [K, 5] RoI tensor"
        sel = producer(picked, "Gather")
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
    cat = producer(rois_all, "Concat")
    if cat is None or len(cat.inputs) != 2 or cat.attrs.get("axis") not in (1, -1):
        return "RoIs not built as cat([batch_index, boxes], 1)"
    zeros, boxes = _skip_single_concat(cat.inputs[0]), _skip_single_concat(cat.inputs[1])
    fill = producer(zeros, "ConstantOfShape")
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


# ----------------------------------------------------------------------------------------------
# the LevelMapper probe


def _level_subgraph(boxes: gs.Tensor, levels: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``levels`` from ``boxes`` and constants only (None if there are
    other inputs or too many nodes)."""
    nodes: dict[int, gs.Node] = {}
    stack = [levels]
    while stack:
        t = stack.pop()
        if t is boxes or isinstance(t, gs.Constant):
            continue
        n = producer(t)
        if n is None:
            return None  # a graph input other than boxes
        if id(n) in nodes:
            continue
        if len(nodes) > 200 or n.op in (PLUGIN_OP_TYPES + (ONNX_ROI_ALIGN,)):
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
        sub = gs.Graph(nodes=copies, inputs=[probe_in], outputs=[probe_out], opset=opset(graph))
        model = gs.export_onnx(sub.toposort(), do_type_check=False)
        model.ir_version = IR_VERSION
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
    if not np.array_equal(got.astype(np.int64), fields.levels(probe)):
        return "a level assignment that differs from torchvision's LevelMapper"
    return None


# ----------------------------------------------------------------------------------------------
# fusing


def _fuse(graph: gs.Graph, unit: _TorchvisionUnit) -> None:
    """``out [K, C, P, P] = Squeeze(plugin(features, Unsqueeze(boxes, 0)), 0)``."""
    last = unit.scatters[-1]
    out = last.outputs[0]
    last.outputs.clear()  # the old chain is dead now; cleanup removes it
    base = out.name
    axes = gs.Constant(f"{base}/maskrt_axis0", np.array([0], dtype=np.int64))
    rois = gs.Variable(
        f"{base}/maskrt_rois", dtype=np.float32, shape=[1, dim(unit.boxes, 0, "K"), 4]
    )
    pooled = gs.Variable(f"{base}/maskrt_pooled")
    set_multilevel_output(pooled, unit.features[0], rois, unit.fields.output_size)
    graph.nodes += [
        axes_node(graph, "Unsqueeze", f"{base}/maskrt_unsqueeze", unit.boxes, axes, rois),
        gs.Node(
            PLUGIN_NAME,
            f"{base}/maskrt_roialign",
            attrs=unit.fields.to_onnx_attributes(),
            inputs=list(unit.features) + [rois],
            outputs=[pooled],
            domain=PLUGIN_DOMAIN,
        ),
        axes_node(graph, "Squeeze", f"{base}/maskrt_squeeze", pooled, axes, out),
    ]
