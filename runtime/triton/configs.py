"""The ``config.pbtxt`` text (Triton's ModelConfig in text format) of each model maskrt writes:
the ``python`` detector, and the ensemble with its three steps (layouts: :mod:`.layout`)."""

from __future__ import annotations

from maskrt import contract
from maskrt.specs import ModelSpec

from .facts import DetectorFacts, Dims
from .layout import MODEL_FILES, PLATFORMS, STEP_SUFFIXES
from .tensors import ORIGINAL_SIZE, REQUEST_INPUT, TRITON_TYPES, response_tensors


def response_outputs(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(name, Triton data type, dims without the batch dimension) of each response tensor."""
    return [(n, TRITON_TYPES[t], _dims(d)) for n, t, d in response_tensors(spec)]


def model_config(
    name: str, spec: ModelSpec, artifact_file: str, backend: str, max_batch: int, instances: int
) -> str:
    """The ``config.pbtxt`` of the python detector (Triton's ModelConfig in text format)."""
    outputs = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in response_outputs(spec)
    )
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch}\n"
        f'input [\n  {{ name: "{REQUEST_INPUT}" data_type: TYPE_UINT8 dims: [ -1 ] '
        "allow_ragged_batch: true }\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching { max_queue_delay_microseconds: 5000 }\n"
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
        f'parameters {{ key: "artifact" value: {{ string_value: "{artifact_file}" }} }}\n'
        f'parameters {{ key: "backend" value: {{ string_value: "{backend}" }} }}\n'
    )


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
