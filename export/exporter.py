"""``export_onnx``: a torchvision detector -> a deploy-ready, static-shape ONNX file.

Steps: wrap the model in :class:`~maskrt.export.deploy.DeployModel`, trace it (one call, in
:mod:`maskrt.export.tracing`), add the ``maskrt::MultiScaleRoIAlign`` function definition, stamp
the I/O contract shapes and the metadata, verify (ONNX checker with full_check, strict shape
inference, no Loop/If) and write the file atomically.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from tqdm import tqdm

from maskrt import contract
from maskrt.errors import InternalError, MaskrtError
from maskrt.fileio import check_writable
from maskrt.introspect import reconcile, spec_from_module
from maskrt.onnxio import IR_VERSION, save_onnx
from maskrt.plugins.contract import UNIT_DOMAIN, UNIT_DOMAIN_VERSION, UNIT_OP_TYPE
from maskrt.specs import ModelSpec

from .check import DEFAULT_MIN_DETECTIONS, EagerCheck, check_against_eager, load_check_images
from .deploy import DEBUG_OUTPUTS, DeployModel
from .functions import multiscale_roi_align_function
from .tracing import trace_to_onnx

DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode
MAX_OPSET = 20  # the TorchScript-based exporter's newest
FORBIDDEN_OPS = ("Loop", "If", "Scan")


_NP_TO_ONNX = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32, "int64": TensorProto.INT64}


@dataclass
class ExportSummary:
    """What was written: node counts by op type, the I/O with shapes, the RoIAlign units."""

    path: Path
    opset: int
    node_counts: dict[str, int]
    inputs: list[tuple[str, str, tuple[str | int, ...]]]
    outputs: list[tuple[str, str, tuple[str | int, ...]]]
    units: list[dict[str, Any]] = field(default_factory=list)
    check: EagerCheck | None = None

    @property
    def num_nodes(self) -> int:
        return sum(self.node_counts.values())

    def __str__(self) -> str:
        def io(rows: list[tuple[str, str, tuple[str | int, ...]]]) -> list[str]:
            return [f"  {n:<16} {t:<8} [{', '.join(str(d) for d in s)}]" for n, t, s in rows]

        lines = [f"wrote {self.path} (opset {self.opset}, {self.num_nodes} nodes)", "inputs:"]
        lines += io(self.inputs)
        lines.append("outputs:")
        lines += io(self.outputs)
        lines.append(f"RoIAlign units ({UNIT_DOMAIN}::{UNIT_OP_TYPE}):")
        for u in self.units:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in u.items()))
        lines.append("nodes by type:")
        counts = sorted(self.node_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"  {op:<24} {c}" for op, c in counts]
        lines.append(str(self.check) if self.check else "not checked against the eager module")
        return "\n".join(lines)


def _example_inputs(
    spec: ModelSpec, batch: int | None, height: int | None, width: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs: two images of different sizes unless the batch is fixed."""
    b = batch or 2
    div = contract.SIZE_DIVISIBLE
    h = height or 256
    w = width or 256
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    sizes = torch.tensor(
        [[h, w]] + [[h - div // 2, w - div] for _ in range(b - 1)], dtype=torch.int32
    )
    sizes = sizes.clamp(min=div)
    return images, sizes


def check_inputs(
    spec: ModelSpec, batch: int | None, height: int | None, width: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager check's inputs: noise images like the tracing inputs, another draw."""
    return _example_inputs(spec, batch, height, width, seed=1)


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (value <= 0 or value % contract.SIZE_DIVISIBLE):
        raise MaskrtError(
            f"--{name} must be a positive multiple of {contract.SIZE_DIVISIBLE}, got {value}"
        )


def _stamp_io(
    model: onnx.ModelProto, specs: tuple[contract.TensorSpec, ...], fixed: dict[str, int]
) -> None:
    """Give the graph inputs/outputs exactly the contract's names, types and shapes."""
    graph = model.graph
    by_name = {v.name: v for v in list(graph.input) + list(graph.output)}
    for ts in specs:
        v = by_name.get(ts.name)
        if v is None:
            raise InternalError(f"traced graph lacks {ts.name!r}")
        shape = [fixed.get(d, d) if isinstance(d, str) else d for d in ts.shape]
        new = helper.make_tensor_value_info(ts.name, _NP_TO_ONNX[ts.dtype], shape)
        v.CopyFrom(new)
    # Let shape inference recompute intermediate shapes from scratch.
    del graph.value_info[:]


def _describe(vi: onnx.ValueInfoProto) -> tuple[str, str, tuple[str | int, ...]]:
    t = vi.type.tensor_type
    dims = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim)
    return vi.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims


def unit_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The RoIAlign unit nodes of a deploy graph, found structurally (domain + op type)."""
    return [n for n in model.graph.node if n.domain == UNIT_DOMAIN and n.op_type == UNIT_OP_TYPE]


def verify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Check a deploy graph; return it with inferred shapes. Raises InternalError on a defect."""
    ops = Counter(n.op_type for n in model.graph.node)
    bad = [op for op in FORBIDDEN_OPS if ops.get(op)]
    if bad:
        raise InternalError(f"deploy graph contains {', '.join(bad)}")
    try:
        inferred = onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0]
        raise InternalError(f"exported graph fails ONNX checks: {first}") from e
    return inferred


def resolve_spec(model: torch.nn.Module, spec: ModelSpec | None = None) -> ModelSpec:
    """The spec to export ``model`` with: read off the module (refusing what maskrt cannot
    deploy faithfully), completed by the caller's ``spec`` (its arch, names and factory), which
    must agree with the module on everything that changes inference."""
    read = spec_from_module(model)
    return read if spec is None else reconcile(spec, read)


def build_onnx(
    model: torch.nn.Module,
    *,
    spec: ModelSpec | None = None,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    opset: int = DEFAULT_OPSET,
    with_proposals: bool = False,
    compact_heads: bool = False,
    step: Callable[[str], None] | None = None,
) -> onnx.ModelProto:
    """The deploy graph of ``model`` as an in-memory, checked ModelProto (ONNX checks only; the
    comparison with the eager module is :func:`export_onnx`'s). ``spec`` as in export_onnx.

    ``with_proposals`` adds the debug outputs ``proposals`` [B, post_nms_top_n, 4],
    ``proposal_scores`` [B, post_nms_top_n] (objectness probabilities, 0 on padding rows) and
    ``num_proposals`` [B] (for the check's diagnosis and tests; not part of the contract).
    ``compact_heads`` runs the mask/keypoint heads only on detected rows (see
    :mod:`maskrt.export.deploy`). ``step(name)`` is called as each stage starts (trace,
    assemble, verify), for progress display.
    """
    step = step or (lambda name: None)
    spec = resolve_spec(model, spec)
    if opset < MIN_OPSET:
        raise MaskrtError(
            f"--opset must be >= {MIN_OPSET} (RoiAlign coordinate modes), got {opset}"
        )
    if (height is None) != (width is None):
        raise MaskrtError("give both --height and --width, or neither")
    _check_size("height", height)
    _check_size("width", width)
    if batch is not None and batch <= 0:
        raise MaskrtError(f"--batch must be positive, got {batch}")

    deploy = DeployModel(
        model.eval(), with_proposals=with_proposals, compact_heads=compact_heads
    ).eval()
    specs = contract.io_specs(
        spec.box_detections_per_img, spec.has_masks, spec.has_keypoints, spec.num_keypoints,
        spec.mask_size, spec.keypoint_heatmap_size,
    )  # fmt: skip
    if with_proposals:
        specs += (
            contract.TensorSpec(DEBUG_OUTPUTS[0], "float32", ("B", deploy.post_nms_top_n, 4)),
            contract.TensorSpec(DEBUG_OUTPUTS[1], "float32", ("B", deploy.post_nms_top_n)),
            contract.TensorSpec(DEBUG_OUTPUTS[2], "int32", ("B",)),
        )
    names = [s.name for s in specs]
    in_names, out_names = names[:2], names[2:]
    fixed = {k: v for k, v in (("B", batch), ("H", height), ("W", width)) if v is not None}
    dynamic_axes: dict[str, dict[int, str]] = {}
    for s in specs:
        axes = {i: d for i, d in enumerate(s.shape) if isinstance(d, str) and d not in fixed}
        if axes:
            dynamic_axes[s.name] = axes

    example = _example_inputs(spec, batch, height, width)
    step("trace")
    onnx_model = trace_to_onnx(deploy, example, in_names, out_names, dynamic_axes, opset)

    step("assemble")
    units = unit_nodes(onnx_model)
    expected_units = 1 + int(spec.has_masks) + int(spec.has_keypoints)
    if len(units) != expected_units:
        raise InternalError(f"{len(units)} RoIAlign units traced, expected {expected_units}")
    num_levels = {len(n.input) - 1 for n in units}
    if len(num_levels) != 1:
        raise InternalError("RoIAlign units with different numbers of feature levels")
    onnx_model.functions.append(multiscale_roi_align_function(num_levels.pop(), opset))
    if not any(o.domain == UNIT_DOMAIN for o in onnx_model.opset_import):
        onnx_model.opset_import.append(helper.make_opsetid(UNIT_DOMAIN, UNIT_DOMAIN_VERSION))
    onnx_model.ir_version = IR_VERSION
    _stamp_io(onnx_model, specs, fixed)
    onnx_model.producer_name = "maskrt"
    helper.set_model_props(
        onnx_model,
        {
            contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION,
            contract.META_MODEL_SPEC: spec.to_json(),
            contract.META_PRECISION: "fp32",
            contract.META_SURGERED: "0",
            contract.META_COMPACT_HEADS: "1" if compact_heads else "0",
        },
    )
    step("verify")
    return verify(onnx_model)


def summarize(model: onnx.ModelProto, path: str | os.PathLike[str], opset: int) -> ExportSummary:
    units = []
    for n in unit_nodes(model):
        units.append({a.name: helper.get_attribute_value(a) for a in n.attribute})
    return ExportSummary(
        path=Path(path),
        opset=opset,
        node_counts=dict(Counter(n.op_type for n in model.graph.node)),
        inputs=[_describe(v) for v in model.graph.input],
        outputs=[_describe(v) for v in model.graph.output],
        units=units,
    )


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    spec: ModelSpec | None = None,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    opset: int = DEFAULT_OPSET,
    compact_heads: bool = False,
    force: bool = False,
    progress: bool = True,
    check: bool = True,
    check_images: Sequence[str | os.PathLike[str]] = (),
    min_check_detections: int = DEFAULT_MIN_DETECTIONS,
) -> ExportSummary:
    """Export ``model``, any torchvision two-stage detector (``GeneralizedRCNN``: Faster, Mask
    or Keypoint R-CNN on an FPN or a single feature map), to ``path``.

    Everything the later stages need is read off the module (:mod:`maskrt.introspect`) into the
    spec written into the graph's metadata. ``spec``, when given, adds what the module cannot
    say (arch, category names, factory) and must agree with the module on the rest. A module
    maskrt cannot deploy faithfully is refused with one line naming the part, before anything
    is written. ``check`` (default on) compares the graph in ONNX Runtime with the eager module
    on two noise images before writing (:mod:`maskrt.export.check`; ``min_check_detections``
    detections at least, with the score thresholds at 0 when needed) and writes nothing if they
    differ. ``check_images``: the user's own images to check on instead of noise (real images
    give fewer near-ties: see export/README.md).

    ``batch``, ``height`` and ``width`` fix those input dimensions (default: dynamic).
    ``compact_heads`` runs the mask/keypoint heads only on detected rows: faster in ONNX Runtime,
    data-dependent shapes inside (the default is static throughout, for TensorRT). The file
    holds the contract's inputs/outputs (:mod:`maskrt.contract`), one ``maskrt::MultiScaleRoIAlign``
    node per RoI head with its ONNX function definition, and the model spec in its metadata.
    """
    target = check_writable(path, force)
    spec = resolve_spec(model, spec)
    model.eval()
    if check_images and not check:
        raise MaskrtError("check images given with the check turned off: give one or the other")
    inputs = (  # read before the slow part, so that a bad image fails at once
        load_check_images(model, check_images, batch, height, width)
        if check_images
        else check_inputs(spec, batch, height, width)
    )
    with tqdm(
        total=2 + int(check), desc=f"export {spec.name}", disable=not progress, leave=False
    ) as bar:

        def step(name: str) -> None:
            if bar.n or name != "trace":
                bar.update(1)
            bar.set_postfix_str(name)

        def build(described: ModelSpec, with_proposals: bool = False) -> onnx.ModelProto:
            return build_onnx(
                model,
                spec=described,
                batch=batch,
                height=height,
                width=width,
                opset=opset,
                with_proposals=with_proposals,
                compact_heads=compact_heads,
            )

        step("trace")
        onnx_model = build(spec)
        result = None
        if check:
            step("check")
            result = check_against_eager(
                onnx_model,
                model,
                inputs,
                # the module as it is then (score thresholds at 0), described afresh
                rebuild=lambda debug: build(spec_from_module(model), with_proposals=debug),
                min_detections=min_check_detections,
            )
        step("write")
        save_onnx(onnx_model, target, force=True)  # refused at the start unless force
        bar.update(1)
    summary = summarize(onnx_model, target, opset)
    summary.check = result
    return summary
