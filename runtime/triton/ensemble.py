"""Ensembles: pre-processing (Python backend) -> the detector on Triton's own backend
(``tensorrt_plan`` for an engine, ``onnxruntime_onnx`` for a deploy graph) -> post-processing
(Python backend).

The ensemble answers like the ``python`` detector (same request and response tensors, see
:mod:`.tensors`), so clients do not change. The steps, after Triton's batch dimension::

    NAME_pre       image UINT8 [-1] (encoded file)    -> images FP32 [3, H, W] (canvas),
                                                         image_sizes INT32 [2],
                                                         original_size INT32 [2]
    NAME_detector  images, image_sizes                -> the deploy contract's outputs
                                                         (num_detections as [1], reshaped to the
                                                         graph's [B])
    NAME_post      detector outputs, image_sizes,     -> the response tensors
                   original_size

The detector batches requests only when their tensors have one shape, so pre-processing pads every
image to one canvas (H, W): the graph's static size, else the spec's ``fixed_size``, else
``max_size`` squared, rounded up to 32. Padding changes a two-stage detector's answer a little,
as torchvision's own batching does (it pads a batch to its largest image): the RPN ranks the
anchors over the padded area too, and the backbone's border features see more padding. The
answers equal the Predictor's padding to the same canvas (tests/test_triton.py); a canvas costs
compute for images of another aspect ratio.

A TensorRT engine that uses maskrt's plugin needs the plugin library in the server: the
repository carries it in the detector's folder, beside its config.pbtxt, and Triton loads it with
``--backend-config=tensorrt,plugins=<path>``: the TensorRT backend only opens each listed
library, so it is the self-registering ``libmaskrt_roialign_trt_autoreg.so``, linked to
libnvinfer (which library each loader takes: plugins/multilevel_roialign/README.md#loading).
Not in a folder of the repository's root: Triton 2.51 takes every one of those for a model and
stops at start on one it cannot load. Read in triton-inference-server's sources of branch
r24.10 (Triton 2.51): core src/model_repository_manager/model_repository_manager.cc:1301-1312
(every subfolder of the root is a model), src/model_repository_manager/model_lifecycle.cc:92-113
(inside a model, only numeric subfolders are versions; files are not looked at),
tensorrt_backend src/tensorrt.cc:134-153 (each ``;``-separated ``plugins`` path is opened at
the backend's initialization) and its README.md (the ``plugins`` option); tested on the real
server with a stand-in library (tests/test_triton.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from .layout import MODEL_FILES, PLATFORMS, STEP_SUFFIXES
from .tensors import ORIGINAL_SIZE, TRITON_TYPES

Dims = tuple[int, ...]


@dataclass(frozen=True)
class DetectorFacts:
    """What the ensemble needs to know of its detector: per tensor the element type and the
    dims after the batch dimension (-1: dynamic), the largest batch, the canvas (H, W)."""

    spec: ModelSpec
    inputs: dict[str, tuple[str, Dims]]
    outputs: dict[str, tuple[str, Dims]]
    max_batch: int
    canvas: tuple[int, int]
    uses_plugins: bool


def _round_up(value: int) -> int:
    return int(math.ceil(value / contract.SIZE_DIVISIBLE) * contract.SIZE_DIVISIBLE)


def spec_canvas(spec: ModelSpec) -> tuple[int, int]:
    """The (H, W) that holds every image the spec resizes to, padded to 32."""
    if spec.fixed_size is not None:
        return _round_up(spec.fixed_size[1]), _round_up(spec.fixed_size[0])
    return _round_up(spec.max_size), _round_up(spec.max_size)


def _batched(name: str, dims: tuple[Any, ...], what: str) -> Dims:
    """Dims after a dynamic batch dimension; -1 for every other dynamic one."""
    if not dims or isinstance(dims[0], int) and dims[0] > 0:
        raise MaskrtError(
            f"{what}: '{name}' has a fixed batch dimension {list(dims)[:1]}; Triton batches "
            "requests only into a dynamic one (export and build without --batch)"
        )
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims[1:])


def _canvas(spec: ModelSpec, images: Dims) -> tuple[int, int]:
    h, w = images[1], images[2]
    if h > 0 and w > 0:
        return h, w
    return spec_canvas(spec)


def onnx_detector_facts(path: Path, max_batch: int) -> DetectorFacts:
    """Facts of an ONNX deploy graph served by Triton's onnxruntime backend."""
    from maskrt.onnxio import custom_op_types, load_onnx, metadata, spec_from_metadata

    graph = load_onnx(path, weights=False)
    if custom_op_types(graph):
        raise MaskrtError(
            f"{path} holds maskrt plugin nodes, which Triton's onnxruntime backend cannot run: "
            "serve the graph from before surgery"
        )
    spec = spec_from_metadata(metadata(graph), str(path))

    def table(values: Any) -> dict[str, tuple[str, Dims]]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            dtype = _numpy_name(t.elem_type)
            out[v.name] = (dtype, _batched(v.name, dims, str(path)))
        return out

    inputs, outputs = table(graph.graph.input), table(graph.graph.output)
    canvas = _canvas(spec, inputs[contract.INPUT_IMAGES][1])
    return DetectorFacts(spec, inputs, outputs, max_batch, canvas, uses_plugins=False)


def _numpy_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name  # type: ignore[no-any-return]


def engine_detector_facts(path: Path, max_batch: int) -> DetectorFacts:
    """Facts of a TensorRT engine (from its sidecar) served by Triton's TensorRT backend."""
    from ..sidecar import read_sidecar

    sidecar = read_sidecar(path)
    spec = sidecar.spec
    io = sidecar.io or contract.io_specs(
        spec.box_detections_per_img, spec.has_masks, spec.has_keypoints, spec.num_keypoints,
        spec.mask_size, spec.keypoint_heatmap_size,
    )  # fmt: skip
    table = {t.name: (t.dtype, _batched(t.name, t.shape, str(path))) for t in io}
    inputs = {n: table[n] for n in (contract.INPUT_IMAGES, contract.INPUT_IMAGE_SIZES)}
    outputs = {n: v for n, v in table.items() if n not in inputs}
    canvas = _canvas(spec, inputs[contract.INPUT_IMAGES][1])
    low, _, high = sidecar.profiles[0][contract.INPUT_IMAGES]
    if not (low[2] <= canvas[0] <= high[2] and low[3] <= canvas[1] <= high[3]):
        raise MaskrtError(
            f"{path}: its profile takes images of {low[2]}x{low[3]} to {high[2]}x{high[3]}, "
            f"but the ensemble pads every image to {canvas[0]}x{canvas[1]} (rebuild with "
            f"--max images:{high[0]}x3x{canvas[0]}x{canvas[1]})"
        )
    batch = min(max_batch, int(high[0]))
    return DetectorFacts(spec, inputs, outputs, batch, canvas, uses_plugins=sidecar.uses_plugins)


# ------------------------------------------------------------------ config.pbtxt text


def _dims(dims: Dims) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims: Dims, extra: str = "") -> str:
    return f'  {{ name: "{name}" data_type: {TRITON_TYPES[dtype]} dims: {_dims(dims)}{extra} }}'


def _io(kind: str, rows: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _per_item(dims: Dims) -> tuple[Dims, str]:
    """Triton's dims for a tensor that is one scalar per batch item (graph shape [B])."""
    return ((1,), " reshape: { shape: [ ] }") if dims == () else (dims, "")


def _head(name: str, max_batch: int, backend: str) -> str:
    return f'name: "{name}"\n{backend}\nmax_batch_size: {max_batch}\n'


def pre_config(name: str, facts: DetectorFacts, instances: int, request_input: str) -> str:
    h, w = facts.canvas
    return (
        _head(name, facts.max_batch, 'backend: "python"')
        + _io("input", [_tensor(request_input, "uint8", (-1,), " allow_ragged_batch: true")])
        + _io(
            "output",
            [
                _tensor(contract.INPUT_IMAGES, "float32", (3, h, w)),
                _tensor(contract.INPUT_IMAGE_SIZES, "int32", (2,)),
                _tensor(ORIGINAL_SIZE, "int32", (2,)),
            ],
        )
        + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        + f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
        + f'parameters {{ key: "canvas_height" value: {{ string_value: "{h}" }} }}\n'
        + f'parameters {{ key: "canvas_width" value: {{ string_value: "{w}" }} }}\n'
    )


def detector_config(name: str, detector: str, facts: DetectorFacts, instances: int) -> str:
    inputs = [_tensor(n, t, d) for n, (t, d) in facts.inputs.items()]
    outputs = [_tensor(n, t, *_per_item(d)) for n, (t, d) in facts.outputs.items()]
    kind = "KIND_GPU" if detector == "tensorrt" else "KIND_AUTO"
    return (
        _head(name, facts.max_batch, f'platform: "{PLATFORMS[detector]}"')
        + f'default_model_filename: "{MODEL_FILES[detector]}"\n'
        + _io("input", inputs)
        + _io("output", outputs)
        + "dynamic_batching { max_queue_delay_microseconds: 5000 }\n"
        + f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
    )


def post_config(
    name: str, facts: DetectorFacts, instances: int, responses: list[tuple[str, str, str]]
) -> str:
    inputs = [_tensor(n, t, _per_item(d)[0]) for n, (t, d) in facts.outputs.items()]
    inputs += [
        _tensor(contract.INPUT_IMAGE_SIZES, "int32", (2,)),
        _tensor(ORIGINAL_SIZE, "int32", (2,)),
    ]
    outputs = [f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in responses]
    return (
        _head(name, facts.max_batch, 'backend: "python"')
        + _io("input", inputs)
        + _io("output", outputs)
        + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        + f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
    )


def _step(model: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> str:
    """One ensemble step; maps are (the step model's tensor, the ensemble's tensor)."""
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs]
    return (
        f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
        + "\n".join(maps)
        + "\n    }"
    )


def ensemble_config(
    name: str, facts: DetectorFacts, request_input: str, responses: list[tuple[str, str, str]]
) -> str:
    pre, detector, post = (name + s for s in STEP_SUFFIXES)
    staged = [contract.INPUT_IMAGES, contract.INPUT_IMAGE_SIZES, ORIGINAL_SIZE]
    detected = [(n, f"detector_{n}") for n in facts.outputs]
    steps = [
        _step(pre, [(request_input, request_input)], [(n, n) for n in staged]),
        _step(detector, [(n, n) for n in facts.inputs], detected),
        _step(
            post,
            [
                *detected,
                (contract.INPUT_IMAGE_SIZES, contract.INPUT_IMAGE_SIZES),
                (ORIGINAL_SIZE, ORIGINAL_SIZE),
            ],
            [(n, n) for n, _, _ in responses],
        ),
    ]
    outputs = [f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in responses]
    return (
        _head(name, facts.max_batch, 'platform: "ensemble"')
        + _io("input", [_tensor(request_input, "uint8", (-1,))])
        + _io("output", outputs)
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


# ------------------------------------------------------------------ checking a repository


def parse_config(path: Path) -> Any:
    """``config.pbtxt`` parsed with Triton's own ModelConfig protobuf (tritonclient's)."""
    from google.protobuf import text_format

    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        from maskrt.errors import missing_extra

        raise (missing_extra(e, "checking a Triton repository") or e) from None
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise MaskrtError(f"{path} is not a valid Triton ModelConfig: {e}") from None


def check_repository(root: str | os.PathLike[str]) -> list[str]:
    """Problems of a Triton model repository written by maskrt (empty: none): every config
    parses as Triton's ModelConfig, every ensemble step names a model of the repository and
    tensors that model declares, and a detector's tensors are its artifact's."""
    root = Path(root)
    configs = {p.parent.name: parse_config(p) for p in sorted(root.glob("*/config.pbtxt"))}
    problems = [f"{n}: config name is {c.name!r}" for n, c in configs.items() if c.name != n]
    for name, config in configs.items():
        if config.platform == "ensemble":
            problems += _check_ensemble(name, config, configs)
        elif config.platform in PLATFORMS.values():
            problems += _check_detector(root / name, config)
    return problems


def _names(tensors: Any) -> set[str]:
    return {t.name for t in tensors}


def _check_ensemble(name: str, config: Any, configs: dict[str, Any]) -> list[str]:
    problems = []
    known = _names(config.input)
    for step in config.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"{name}: step model {step.model_name!r} is not in the repository")
            continue
        for key, value in step.input_map.items():
            if key not in _names(model.input):
                problems.append(f"{name}: {step.model_name} has no input {key!r}")
            if value not in known:
                problems.append(f"{name}: tensor {value!r} is used before any step makes it")
        for key, value in step.output_map.items():
            if key not in _names(model.output):
                problems.append(f"{name}: {step.model_name} has no output {key!r}")
            known.add(value)
        if model.max_batch_size < config.max_batch_size:
            problems.append(f"{name}: {step.model_name} batches fewer than the ensemble")
    problems += [f"{name}: no step makes output {o!r}" for o in _names(config.output) - known]
    return problems


def _check_detector(folder: Path, config: Any) -> list[str]:
    detector = next(k for k, v in PLATFORMS.items() if v == config.platform)
    artifact = folder / "1" / (config.default_model_filename or MODEL_FILES[detector])
    if not artifact.is_file():
        return [f"{folder.name}: {artifact} is missing"]
    facts = (onnx_detector_facts if detector == "onnxruntime" else engine_detector_facts)(
        artifact, config.max_batch_size
    )
    problems = []
    for kind, declared, real in (
        ("input", config.input, facts.inputs),
        ("output", config.output, facts.outputs),
    ):
        for t in declared:
            if t.name not in real:
                problems.append(f"{folder.name}: {kind} {t.name!r} is not in {artifact.name}")
                continue
            dims = tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims)
            if dims != real[t.name][1]:
                problems.append(
                    f"{folder.name}: {kind} {t.name!r} dims {list(dims)} but "
                    f"{artifact.name} has {list(real[t.name][1])}"
                )
        missing = set(real) - _names(declared)
        problems += [f"{folder.name}: {artifact.name}'s {kind} {m!r} not declared" for m in missing]
    return problems
