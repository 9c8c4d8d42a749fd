"""What a Triton repository needs to know of a deploy artifact, read without running it: its
model spec, and for the ensemble its detector's tensors, largest batch and canvas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from ..predictor import SUFFIX_BACKEND


def artifact_spec(artifact: Path) -> ModelSpec:
    """The model spec of a deploy artifact, read without running it."""
    backend = SUFFIX_BACKEND.get(artifact.suffix.lower())
    if backend == "onnxruntime":
        from maskrt.onnxio import read_spec

        return read_spec(artifact)
    if backend == "tensorrt":
        from ..sidecar import read_sidecar

        return read_sidecar(artifact).spec
    if backend == "torch":
        from maskrt.checkpoint import checkpoint_spec

        return checkpoint_spec(artifact)
    raise MaskrtError(
        f"cannot serve {artifact}: expected an .onnx graph, an .engine or a checkpoint"
    )


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
    return spec.canvas_size()


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
