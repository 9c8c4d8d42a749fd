"""Graph finishing after the matchers: dead nodes and unused model-local functions removed,
constants folded, the model's fields, functions, opset imports and metadata carried over from the
source, shapes inferred and the inputs and outputs declared exactly as the source declares them.
Also the one RoIAlign counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx
import onnx_graphsurgeon as gs

from maskrt.contract import META_SURGERED
from maskrt.onnxio import IR_VERSION
from maskrt.plugins.contract import PLUGIN_DOMAIN, UNIT_DOMAIN, UNIT_OP_TYPE

from .graph import DEFAULT_DOMAINS, ONNX_ROI_ALIGN, PLUGIN_OP_TYPES

PLUGIN_DOMAIN_VERSION = 1

# (domain, op type) of a node; (domain, name) of the model-local function it calls
_OpKey = tuple[str, str]


def count_roi_align(model: onnx.ModelProto, *, nested: bool = True, plugins: bool = False) -> int:
    """The RoIAlign nodes of ``model`` that surgery replaces (ONNX ``RoiAlign`` and maskrt
    units), or with ``plugins`` the plugin nodes it writes; ``nested`` counts the nodes of
    If/Loop/Scan bodies too."""

    def walk(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
        for n in graph.node:
            yield n
            if not nested:
                continue
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                for g in a.graphs:
                    yield from walk(g)

    def counted(n: onnx.NodeProto) -> bool:
        if plugins:
            return n.op_type in PLUGIN_OP_TYPES
        return (n.op_type == ONNX_ROI_ALIGN and n.domain in DEFAULT_DOMAINS) or (
            n.op_type == UNIT_OP_TYPE and n.domain == UNIT_DOMAIN
        )

    return sum(counted(n) for n in walk(model.graph))


def io_signature(graph: gs.Graph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(t.name for t in graph.inputs), tuple(t.name for t in graph.outputs)


def used_functions(
    calls: Iterable[_OpKey], bodies: Mapping[_OpKey, Iterable[_OpKey]]
) -> set[_OpKey]:
    """The model-local functions reachable from the node keys ``calls``; ``bodies`` maps each
    function to the keys of the nodes in its body (a function may call others)."""
    used: set[_OpKey] = set()
    stack = list(calls)
    while stack:
        key = stack.pop()
        if key in bodies and key not in used:
            used.add(key)
            stack += bodies[key]
    return used


def clean(graph: gs.Graph) -> None:
    """Remove dead nodes and the functions nothing calls any more (the replaced units'
    definitions), fold constants, sort the nodes."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    bodies = {
        (f.domain, f.name): [(n.domain or "", n.op) for n in f.nodes] for f in graph.functions
    }
    used = used_functions(((n.domain or "", n.op) for n in graph.nodes), bodies)
    graph.functions = [f for f in graph.functions if (f.domain, f.name) in used]
    _fold_constants(graph)


def finish_model(graph: gs.Graph, src: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a model: what graphsurgeon does not keep carried over from ``src`` (model
    fields, the functions still called, the opset imports still used, metadata), marked as
    surgered, shapes inferred, inputs and outputs declared exactly as in ``src``."""
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = src.ir_version
    out.producer_name = src.producer_name
    out.producer_version = src.producer_version
    out.domain = src.domain
    out.model_version = src.model_version
    out.doc_string = src.doc_string

    used_ops = {(n.domain, n.op_type) for n in out.graph.node}
    # the source's own FunctionProtos (graphsurgeon's copies may have been folded)
    bodies = {(f.domain, f.name): [(n.domain, n.op_type) for n in f.node] for f in src.functions}
    keep = used_functions(used_ops, bodies)
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

    out = onnx.shape_inference.infer_shapes(out)
    _restore_io(out, src)
    return out


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


def _fold_constants(graph: gs.Graph) -> None:
    """graphsurgeon's constant folding, which evaluates in ONNX Runtime: give every (sub)graph an
    IR version ONNX Runtime accepts while it runs (subgraphs have none of their own)."""
    import onnxruntime as ort

    saved = graph.ir_version
    ir = min(saved or IR_VERSION, IR_VERSION)
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
