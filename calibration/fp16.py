"""FP32 deploy graph -> FP16 graph with FP32 islands (TensorRT 11 builds it as typed).

The mechanics (retyping tensors, converting weights and constants, inserting Casts at the region
borders, keeping the graph I/O FP32) are ONNX Runtime's
``onnxruntime.transformers.float16.convert_float_to_float16``, given every node outside the
feature region (:mod:`maskrt.calibration.regions`) as its ``node_block_list``. Three things it
does not cover are done here:

* It routes a tensor between two blocked (FP32) nodes through a FP32 -> FP16 -> FP32 Cast pair,
  which would round coordinates to FP16; those pairs are removed (:func:`collapse_cast_pairs`).
* It does not look into model-local functions or custom-domain nodes: the RoIAlign units must
  take FP16 features, FP32 RoIs and give FP16 pooled features (:func:`retype_units`).
* Weights shared by FP16 and FP32 nodes would be rounded for both; the FP32 users get a copy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from maskrt.onnxio import load_onnx, save_onnx

from .graphs import (
    check_precision,
    remove_dead_nodes,
    set_precision,
    toposort,
)
from .regions import consumers, find_regions, float_tensors, is_unit, name_nodes


@dataclass(frozen=True)
class Fp16Summary:
    """What the conversion did: node counts of the FP16 region and of the FP32 islands."""

    path: Path | None
    fp16_nodes: int
    fp32_nodes: int
    casts: int

    def __str__(self) -> str:
        where = f"wrote {self.path}: " if self.path else ""
        return (
            f"{where}{self.fp16_nodes} nodes in FP16, {self.fp32_nodes} in FP32 islands, "
            f"{self.casts} Casts at the borders"
        )


def _split_shared_constants(model: onnx.ModelProto, blocked: set[str]) -> None:
    """Give FP32 nodes their own copy of float initializers that FP16 nodes also read."""
    g = model.graph
    users = consumers(model)
    inits = {t.name: t for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for name, tensor in list(inits.items()):
        readers = users.get(name, [])
        fp16 = [i for i in readers if g.node[i].name not in blocked]
        fp32 = [i for i in readers if g.node[i].name in blocked]
        if not fp16 or not fp32:
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = f"{name}__fp32"
        g.initializer.append(copy)
        for i in fp32:
            node = g.node[i]
            for k, t in enumerate(node.input):
                if t == name:
                    node.input[k] = copy.name


def _blocked_nodes(model: onnx.ModelProto, fp16_nodes: set[int]) -> set[str]:
    """Names of the nodes that stay FP32: all but ``fp16_nodes`` (indices) and the Constants that
    only those read (they convert in place)."""
    g = model.graph
    users = consumers(model)
    keep = {g.node[i].name for i in fp16_nodes}
    for node in g.node:
        if node.op_type == "Constant":
            readers = users.get(node.output[0], [])
            if readers and all(i in fp16_nodes for i in readers):
                keep.add(node.name)
    return {n.name for n in g.node if n.name not in keep}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Cast":
            types[node.output[0]] = helper.get_attribute_value(node.attribute[0])
    return types


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    for a in node.attribute:
        if a.name == "to":
            return int(a.i)
    return None


def collapse_cast_pairs(model: onnx.ModelProto) -> int:
    """Read ``x`` directly wherever a graph reads ``Cast<fp32>(Cast<fp16>(x))`` of a FP32 ``x``
    (a lossy round trip); returns how many reads were rewired. Dead Casts are left for
    :func:`remove_dead_nodes`."""
    g = model.graph
    types = _elem_types(model)
    producer = {o: n for n in g.node for o in n.output}

    def source(t: str) -> str | None:
        up = producer.get(t)
        if up is None or _cast_to(up) != TensorProto.FLOAT:
            return None
        mid = producer.get(up.input[0])
        if mid is None or _cast_to(mid) != TensorProto.FLOAT16:
            return None
        x = mid.input[0]
        return x if types.get(x) == TensorProto.FLOAT else None

    rewired = 0
    outputs = {o.name for o in g.output}
    for node in g.node:
        if node.op_type == "Cast" and node.output[0] in outputs and _cast_to(node) == 1:
            # graph output cast: make it an Identity of the FP32 source when there is one
            x = source(node.output[0])
            if x is not None:
                node.op_type = "Identity"
                del node.attribute[:]
                node.input[0] = x
                rewired += 1
            continue
        for k, t in enumerate(node.input):
            x = source(t) if t else None
            if x is not None:
                node.input[k] = x
                rewired += 1
    return rewired


def _patch_unit_function(model: onnx.ModelProto, unit: onnx.NodeProto) -> None:
    """Make the unit's function take features of any float type: pool in FP32 (ONNX Runtime's
    CPU RoiAlign is FP32-only, the coordinates must stay FP32) and return the features' type."""
    for f in model.functions:
        if f.domain != unit.domain or f.name != unit.op_type:
            continue
        if any(n.op_type == "CastLike" and n.output[0] in f.output for n in f.node):
            return  # already patched (two units share one function)
        features = list(f.input[:-1])
        renamed = {t: f"{t}__f32" for t in features}
        out_renamed = {t: f"{t}__f32" for t in f.output}
        body = [helper.make_node("Cast", [t], [renamed[t]], to=TensorProto.FLOAT) for t in features]
        for node in f.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for k, t in enumerate(new.input):
                new.input[k] = renamed.get(t, t)
            for k, t in enumerate(new.output):
                new.output[k] = out_renamed.get(t, t)
            body.append(new)
        body += [helper.make_node("CastLike", [out_renamed[t], features[0]], [t]) for t in f.output]
        del f.node[:]
        f.node.extend(body)
        return
    # A plugin node (after surgery) has no function: its implementation takes FP16 as declared.


def retype_units(model: onnx.ModelProto, fp16_both_sides: bool = False) -> None:
    """RoIAlign units were blocked (kept FP32) by the converter; give them their FP16 features
    directly and let them produce FP16, keeping only the RoIs (last input) FP32.

    With ``fp16_both_sides`` (a graph of mixed precision) only units whose levels all arrive as
    FP16 and whose one reader wants FP16 are retyped; the others stay FP32 behind the Casts, so
    a unit always sees one type on all its levels and gives its reader the type it reads."""
    g = model.graph
    types = _elem_types(model)
    producer = {o: n for n in g.node for o in n.output}
    users = consumers(model)
    for unit in [n for n in g.node if is_unit(n)]:
        if fp16_both_sides and not _fp16_on_both_sides(unit, producer, users, types, g):
            continue
        for k in range(len(unit.input) - 1):
            up = producer.get(unit.input[k])
            if up is not None and _cast_to(up) == TensorProto.FLOAT:
                if types.get(up.input[0]) == TensorProto.FLOAT16:
                    unit.input[k] = up.input[0]
        readers = users.get(unit.output[0], [])
        if len(readers) == 1:
            cast = g.node[readers[0]]
            if _cast_to(cast) == TensorProto.FLOAT16:
                unit.output[0] = cast.output[0]
                cast.input[0] = ""  # now dead: its output has a new producer
                cast.output[0] = f"{cast.output[0]}__dead"
        _patch_unit_function(model, unit)


def _fp16_on_both_sides(
    unit: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    users: dict[str, list[int]],
    types: dict[str, int],
    g: onnx.GraphProto,
) -> bool:
    """The unit's levels all come through FP16 -> FP32 Casts and its one reader casts to FP16."""
    for t in unit.input[:-1]:
        up = producer.get(t)
        if up is None or _cast_to(up) != TensorProto.FLOAT:
            return False
        if types.get(up.input[0]) != TensorProto.FLOAT16:
            return False
    readers = users.get(unit.output[0], [])
    return len(readers) == 1 and _cast_to(g.node[readers[0]]) == TensorProto.FLOAT16


def convert_to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """The FP16 version of a FP32 deploy graph; see :func:`convert_with_summary`."""
    return convert_with_summary(model, keep_io_types)[0]


def convert_with_summary(
    model: onnx.ModelProto, keep_io_types: bool = True
) -> tuple[onnx.ModelProto, Fp16Summary]:
    """The FP16 version of a FP32 deploy graph (a new ModelProto; ``model`` is not changed).

    Feature tensors [B, C, H, W] of backbone, FPN and heads become FP16; coordinates, scores,
    NMS inputs and the RoIs stay FP32. With ``keep_io_types`` the graph I/O stays FP32 (the
    deploy contract's types).
    """
    check_precision(model, "fp32")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    name_nodes(work)
    regions = find_regions(work, float_tensors(work))
    blocked = _blocked_nodes(work, regions.feature_nodes)
    fp16_count = len(work.graph.node) - len(blocked)
    converted = _convert(work, blocked, keep_io_types, mixed=False)
    set_precision(converted, "fp16")
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast") - sum(
        1 for n in model.graph.node if n.op_type == "Cast"
    )
    return converted, Fp16Summary(None, fp16_count, len(blocked), casts)


def _convert(
    work: onnx.ModelProto, blocked: set[str], keep_io_types: bool, mixed: bool
) -> onnx.ModelProto:
    """ORT's converter with the ``blocked`` nodes FP32, then the repairs of the module docstring
    (``work`` gets the FP32 copies of shared weights)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _split_shared_constants(work, blocked)
    converted = convert_float_to_float16(
        work,
        keep_io_types=keep_io_types,
        op_block_list=[],
        node_block_list=sorted(blocked),
        disable_shape_infer=False,
    )
    collapse_cast_pairs(converted)
    retype_units(converted, fp16_both_sides=mixed)
    remove_dead_nodes(converted)
    toposort(converted.graph)
    del converted.graph.value_info[:]  # stale after the rewiring; inference recomputes them
    return converted


def convert_nodes_to_fp16(model: onnx.ModelProto, fp16_names: AbstractSet[str]) -> onnx.ModelProto:
    """A new graph in which the nodes named ``fp16_names`` (and the Constants only they read)
    compute in FP16 and every other node keeps its types: the FP16 groups of an INT8 graph.
    FP32 Q/DQ nodes stay FP32; Casts mark every FP16/FP32 border; graph I/O keeps its types."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    fp16 = {i for i, n in enumerate(work.graph.node) if n.name in fp16_names}
    return _convert(work, _blocked_nodes(work, fp16), keep_io_types=True, mixed=True)


def calibrate_fp16(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    keep_io_types: bool = True,
    force: bool = False,
) -> Fp16Summary:
    """Read the FP32 deploy graph ``src``, write its FP16 version to ``dst`` (atomically)."""
    model = load_onnx(src, deploy_graph=True)
    fp16, summary = convert_with_summary(model, keep_io_types=keep_io_types)
    save_onnx(fp16, dst, force=force)
    return dataclasses.replace(summary, path=Path(dst))
