"""Checking and ordering the deploy graphs calibration rewrites (files: :mod:`maskrt.onnxio`)."""

from __future__ import annotations

import onnx

from maskrt import contract
from maskrt.errors import InternalError, MaskrtError
from maskrt.onnxio import metadata, set_metadata


def check_precision(model: onnx.ModelProto, wanted: str) -> None:
    """Refuse a graph that is not of precision ``wanted`` (e.g. converting an INT8 graph)."""
    meta = metadata(model)
    have = meta.get(contract.META_PRECISION, "fp32")
    if have != wanted:
        raise MaskrtError(f"expected a {wanted} deploy graph, got a {have} one")
    if meta.get(contract.META_SURGERED) == "1":
        raise MaskrtError("calibrate the graph before `maskrt surgery`, not after it")


def set_precision(model: onnx.ModelProto, precision: str) -> None:
    set_metadata(model, **{contract.META_PRECISION: precision})


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so that every tensor is produced before it is read (stable)."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(t in produced for t in node.input):
                ordered.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({t for n in rest for t in n.input if t not in produced})[:3]
            raise InternalError(f"graph has a cycle or unproduced tensors {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs are read (by a node or as a graph output)."""
    g = model.graph
    while True:
        needed = {o.name for o in g.output} | {t for n in g.node for t in n.input}
        keep = [n for n in g.node if any(o in needed for o in n.output)]
        if len(keep) == len(g.node):
            return
        del g.node[:]
        g.node.extend(keep)
