"""What TensorRT would refuse, or silently change, in an ONNX graph, found before TensorRT is
needed.

TensorRT runs on no machine maskrt is tested on, so these rules are read off NVIDIA's sources:

* onnx-tensorrt 10.1-GA ``docs/operators.md``: the op types its parser imports (l.19-214; one
  with no importer is looked up as a plugin of that name, ``ModelImporter.cpp`` l.153-168), the
  opsets it takes (9 to 20, l.5), the data types (l.7-11: DOUBLE is cast down to FLOAT, UINT8
  only at the network's inputs and outputs) and TopK's limits (l.207: ``sorted`` must be 1,
  K below 3840).
* ``NvInfer.h``, ``ITopKLayer``: K up to 3840 (TensorRT 11.1 l.3448 and l.3504, 10.3 l.3546 and
  l.3602). The header's "up to 3840" is the bound used here.
* ``NvInfer.h``, ``INMSLayer``: only the 5000 highest-scoring boxes of each batch item are
  considered for selection, 2000 on SM 5.3/6.2 (11.1 l.6229-6230 and l.6266, 10.3 l.5974-5975
  and l.6011); the rest are dropped without an error, while ONNX Runtime keeps them.

A maskrt deploy graph names the model spec field behind each number (TopK K and NMS batch
items come from ``rpn_pre_nms_top_n_test``, ``rpn_post_nms_top_n_test`` and
``box_detections_per_img``), and one exported with ``--compact-heads`` (metadata
:data:`maskrt.contract.META_COMPACT_HEADS`) is refused outright: its heads have data-dependent
shapes (NonZero on BOOL, a Range to a data-dependent count, ScatterND), built for ONNX Runtime.

:func:`tensorrt_findings` is the one check: ``maskrt build`` refuses a graph with findings before
it loads TensorRT (:func:`require_tensorrt_ready`); ``surgery`` and ``convert`` print them as
warnings. ``maskrt export`` does not refuse: ONNX Runtime users are not bound by these limits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

import onnx

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.onnxio import metadata
from maskrt.plugins.contract import PLUGIN_NAME, SINGLE_PLUGIN_NAME
from maskrt.specs import ModelSpec, SpecError

TOPK_MAX_K = 3840  # NvInfer.h ITopKLayer::setK
NMS_MAX_BOXES = 5000  # NvInfer.h INMSLayer: boxes considered per batch item (SM 5.3/6.2: 2000)
OPSETS = (9, 20)  # onnx-tensorrt 10.1 docs/operators.md l.5

# The spec fields that size TopK and NMS in a maskrt deploy graph (export/deploy.py).
SIZE_FIELDS = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "box_detections_per_img")

# Op types onnx-tensorrt 10.1-GA has an importer for ("Y" in docs/operators.md).
SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
    ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
PLUGIN_OPS = (PLUGIN_NAME, SINGLE_PLUGIN_NAME)  # found in the plugin registry at parse time

_T = onnx.TensorProto
# The element types the parser takes (docs/operators.md l.7-11). INT8, INT4 and FP8 (E4M3) are
# quantized types, there through Q/DQ as in maskrt's INT8 graphs; UINT8 only as a network input
# or output; DOUBLE is cast down to FLOAT, clamped to +-FLT_MAX.
_TAKEN_TYPES = frozenset(
    {_T.FLOAT, _T.FLOAT16, _T.BFLOAT16, _T.INT32, _T.INT64, _T.INT8, _T.INT4, _T.BOOL,
     _T.FLOAT8E4M3FN}
)  # fmt: skip
_IO_ONLY = _T.UINT8
_CAST_DOWN = _T.DOUBLE


def tensorrt_findings(model: onnx.ModelProto) -> list[str]:
    """One line for each thing TensorRT (10.x/11.x, its ONNX parser) would refuse in ``model`` or
    compute differently from ONNX Runtime; empty when there is none.

    Reads shapes by ONNX shape inference (``model`` is not changed) and, for a maskrt deploy
    graph, the model spec in its metadata, to name the spec field behind a limit.
    """
    meta = metadata(model)
    spec = _spec(meta)
    lines: list[str] = []
    if _compact_heads(model, meta):
        lines.append(
            "exported with --compact-heads (NonZero on BOOL, a data-dependent Range, ScatterND: "
            "for ONNX Runtime, not TensorRT): for TensorRT, use `maskrt export` without "
            "--compact-heads"
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes only sharpen the checks below
        inferred = model
    opset = _default_opset(inferred)
    if opset is not None and not OPSETS[0] <= opset <= OPSETS[1]:
        lines.append(
            f"opset {opset}: TensorRT's ONNX parser takes opsets {OPSETS[0]} to {OPSETS[1]}"
        )
    nodes = list(_nodes(inferred))
    lines += _op_lines(inferred, nodes)
    lines += _type_lines(inferred)
    lines += _topk_lines(inferred, nodes, spec, opset)
    lines += _nms_lines(inferred, nodes, spec)
    return lines


def require_tensorrt_ready(model: onnx.ModelProto, source: str) -> None:
    """Raise a one-line :class:`MaskrtError` naming every finding of :func:`tensorrt_findings`."""
    found = tensorrt_findings(model)
    if found:
        raise MaskrtError(f"{source} is not ready for TensorRT: {'; '.join(found)}")


# ----------------------------------------------------------------------------------------------
# helpers


def _compact_heads(model: onnx.ModelProto, meta: dict[str, str]) -> bool:
    """Exported with ``--compact-heads``: the metadata says so; a deploy graph written before
    the key existed has NonZero at the top level only then (the default keeps it inside the
    RoIAlign units)."""
    flag = meta.get(contract.META_COMPACT_HEADS)
    if flag is not None:
        return flag == "1"
    return contract.META_MODEL_SPEC in meta and any(
        n.op_type == "NonZero" for n in model.graph.node
    )


def _spec(meta: dict[str, str]) -> ModelSpec | None:
    text = meta.get(contract.META_MODEL_SPEC)
    if text is None:
        return None
    try:
        return ModelSpec.from_json(text)
    except (SpecError, ValueError, TypeError):
        return None  # a bad spec is reported where the graph is read as a deploy graph


def _default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def _with_bodies(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """``nodes`` and, depth first, the nodes of every graph-valued attribute (If/Loop/Scan
    bodies, at any depth)."""
    for n in nodes:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _with_bodies(a.g.node)
            for g in a.graphs:
                yield from _with_bodies(g.node)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node the parser imports: the graph's, its If/Loop/Scan bodies' and those of the
    model-local functions (the parser inlines them), bodies inside functions included."""
    yield from _with_bodies(model.graph.node)
    for f in model.functions:
        yield from _with_bodies(f.node)


def _op_lines(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto]) -> list[str]:
    local = {f.name for f in model.functions}  # the parser finds local functions by name
    missing: dict[str, int] = defaultdict(int)
    for n in nodes:
        if n.op_type in SUPPORTED_OPS or n.op_type in local or n.op_type in PLUGIN_OPS:
            continue
        missing[f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
    return [
        f"op {op} ({count} node(s)): TensorRT's ONNX parser has no importer for it and would "
        f"look for a plugin of that name"
        for op, count in sorted(missing.items())
    ]


def _value_types(model: onnx.ModelProto) -> Iterator[tuple[str, int, bool]]:
    """(name, element type, is a graph input or output) of every typed tensor."""
    g = model.graph
    io = {v.name for v in list(g.input) + list(g.output)}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            yield v.name, v.type.tensor_type.elem_type, v.name in io
    for t in g.initializer:
        yield t.name, t.data_type, False


def _type_lines(model: onnx.ModelProto) -> list[str]:
    refused: dict[int, list[str]] = defaultdict(list)
    cast_down: list[str] = []
    for name, elem, at_io in _value_types(model):
        if elem == _CAST_DOWN:
            cast_down.append(name)
        elif elem == _IO_ONLY:
            if not at_io:
                refused[elem].append(name)
        elif elem != _T.UNDEFINED and elem not in _TAKEN_TYPES:
            refused[elem].append(name)
    lines = []
    for elem, names in sorted(refused.items()):
        where = " inside the network" if elem == _IO_ONLY else ""
        lines.append(
            f"{_T.DataType.Name(elem)} tensors{where} ({len(names)}, e.g. {names[0]!r}): "
            f"TensorRT's ONNX parser does not take them"
        )
    if cast_down:
        lines.append(
            f"DOUBLE tensors ({len(cast_down)}, e.g. {cast_down[0]!r}): TensorRT casts them "
            f"down to FLOAT, clamping to +-FLT_MAX"
        )
    return lines


def _constant_values(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Integer values of the graph's initializers and Constant node outputs (small ones)."""
    from onnx import numpy_helper

    values: dict[str, list[int]] = {}
    tensors = [(t.name, t) for t in model.graph.initializer]
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    tensors.append((n.output[0], a.t))
    for name, t in tensors:
        if t.data_type in (_T.INT64, _T.INT32) and len(t.dims) <= 1 and _numel(t.dims) <= 8:
            values[name] = [int(v) for v in numpy_helper.to_array(t).ravel()]
    return values


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Known dimensions (None: unknown) of the tensors shape inference typed."""
    g = model.graph
    out: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _fields_for(spec: ModelSpec | None, value: int) -> str:
    """ " (spec field x=value)" for the size fields of ``spec`` equal to ``value``, else ""."""
    if spec is None:
        return ""
    names = [f for f in SIZE_FIELDS if getattr(spec, f) == value]
    if not names:
        return ""
    return f" (spec field {' or '.join(f'{f}={value}' for f in names)})"


def _topk_lines(
    model: onnx.ModelProto,
    nodes: Iterable[onnx.NodeProto],
    spec: ModelSpec | None,
    opset: int | None,
) -> list[str]:
    consts = _constant_values(model)
    too_big: dict[int, int] = defaultdict(int)
    unsorted = 0
    for n in nodes:
        if n.op_type != "TopK" or n.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("sorted", 1) != 1:
            unsorted += 1
        if opset is not None and opset < 10:
            k = [int(attrs["k"])] if "k" in attrs else None
        else:
            k = consts.get(n.input[1]) if len(n.input) > 1 else None
        if k and k[0] > TOPK_MAX_K:
            too_big[k[0]] += 1
    lines = [
        f"TopK K={k} ({count} node(s)) is above TensorRT's limit of {TOPK_MAX_K}"
        f"{_fields_for(spec, k)}"
        for k, count in sorted(too_big.items())
    ]
    if unsorted:
        lines.append(
            f"TopK with sorted=0 ({unsorted} node(s)): TensorRT's ONNX parser needs sorted=1"
        )
    return lines


def _nms_lines(
    model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto], spec: ModelSpec | None
) -> list[str]:
    dims = _dims(model)
    too_big: dict[int, int] = defaultdict(int)
    for n in nodes:
        if n.op_type != "NonMaxSuppression" or n.domain not in ("", "ai.onnx"):
            continue
        # boxes [NB, N, 4], scores [NB, C, N]: N boxes per batch item, whichever shape knows it
        boxes = dims.get(n.input[0], [])
        scores = dims.get(n.input[1], []) if len(n.input) > 1 else []
        known = [d for d in (boxes[1:2] + scores[2:3]) if d]
        if known and known[0] > NMS_MAX_BOXES:
            too_big[known[0]] += 1
    return [
        f"NonMaxSuppression over {num} boxes per batch item ({count} node(s)): TensorRT considers "
        f"only the {NMS_MAX_BOXES} highest-scoring ones and drops the rest silently"
        f"{_fields_for(spec, num)}"
        for num, count in sorted(too_big.items())
    ]
