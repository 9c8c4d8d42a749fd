"""Loading, checking, ordering and saving the deploy graphs that calibration reads and writes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, check_writable

# ONNX Runtime 1.31 reads IR <= 13; the exporter writes 10 and the tools keep what they read.
MAX_IR_VERSION = 10


def load_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """A maskrt deploy graph from ``path``, with a one-line error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise MaskrtError(f"{p} does not exist")
    try:
        model = onnx.load(os.fspath(p))
    except Exception as e:  # protobuf raises DecodeError and others for a non-ONNX file
        raise MaskrtError(f"{p} is not a readable ONNX model ({type(e).__name__})") from None
    if contract.META_MODEL_SPEC not in metadata(model):
        raise MaskrtError(f"{p} is not a maskrt deploy graph (no {contract.META_MODEL_SPEC})")
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, **values: str) -> None:
    meta = metadata(model)
    meta.update(values)
    helper.set_model_props(model, meta)


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
            raise MaskrtError(f"internal: graph has a cycle or unproduced tensors {missing}")
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


def save_graph(model: onnx.ModelProto, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Check ``model`` (ONNX checker) and write it atomically; refuse to overwrite unless
    ``force``."""
    target = check_writable(path, force)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION) or MAX_IR_VERSION
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise MaskrtError(
            f"internal: the converted graph fails the ONNX checker: {first}"
        ) from None
    with atomic_path(target) as tmp:
        onnx.save(model, os.fspath(tmp))
    return target
