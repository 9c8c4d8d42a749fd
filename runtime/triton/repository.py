"""``maskrt triton``: a Triton model repository for a deploy artifact.

The repository holds one Python-backend model (the ``python`` detector) that decodes encoded
images, runs maskrt's :class:`~maskrt.runtime.Predictor` on the artifact copied into it and
answers with detections in original-image pixels. One image per request; Triton batches the
requests (dynamic batching, ragged inputs) and the model predicts each execution's images as one
batch. Tensors, after Triton's batch dimension (always 1 per request)::

    image           UINT8  [-1]       the encoded image file (PNG, JPEG, ...), as bytes
    num_detections  INT32  [1]        N, the detections of this image
    boxes           FP32   [-1, 4]    x1, y1, x2, y2 in original-image pixels, by descending score
    scores          FP32   [-1]
    labels          INT32  [-1]       1..num_classes-1
    masks           UINT8  [-1]       UTF-8 JSON: the COCO RLE of each pasted mask (Mask R-CNN)
    keypoints       FP32   [-1, K, 3] x, y, visibility score (Keypoint R-CNN)

No BYTES tensors: they cannot cross the Python backend's stub by DLPack, and its numpy path is
broken under numpy 2 (see :mod:`.python_model`). A request that fails (bytes that are no
image, an image too large) gets an error response of its own; the other requests of the batch
are answered.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_write_text
from maskrt.specs import ModelSpec

REQUEST_INPUT = "image"
DETECTORS = ("python",)

# Repository-side file of the Python-backend model: the real code is maskrt.runtime.triton's
# python_model, so that the repository stays small and the code is tested where it lives.
_MODEL_PY = '''"""maskrt detector for Triton's Python backend (written by `maskrt triton`)."""

import os
import site
import sys

# `maskrt serve` names the site-packages folders of the environment maskrt runs from; Triton's
# Python stub embeds the system interpreter and would not see them otherwise. They go first.
for _folder in reversed(os.environ.get("MASKRT_SITE_DIRS", "").split(os.pathsep)):
    if _folder:
        site.addsitedir(_folder)
        sys.path.remove(_folder)
        sys.path.insert(0, _folder)

from maskrt.runtime.triton.python_model import TritonPythonModel  # noqa: E402,F401
'''

_SUFFIX_BACKEND = {".onnx": "onnxruntime", ".engine": "tensorrt", ".pt": "torch", ".pth": "torch"}


def artifact_spec(artifact: Path) -> ModelSpec:
    """The model spec of a deploy artifact, read without running it."""
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        from maskrt.onnxio import read_spec

        return read_spec(artifact)
    if suffix == ".engine":
        from ..sidecar import read_sidecar

        return read_sidecar(artifact).spec
    if suffix in (".pt", ".pth"):
        from maskrt.checkpoint import checkpoint_spec

        return checkpoint_spec(artifact)
    raise MaskrtError(
        f"cannot serve {artifact}: expected an .onnx graph, an .engine or a checkpoint"
    )


def _outputs(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(name, Triton data type, dims without the batch dimension) of each response tensor."""
    rows = [
        ("num_detections", "TYPE_INT32", "[ 1 ]"),
        ("boxes", "TYPE_FP32", "[ -1, 4 ]"),
        ("scores", "TYPE_FP32", "[ -1 ]"),
        ("labels", "TYPE_INT32", "[ -1 ]"),
    ]
    if spec.has_masks:
        rows.append(("masks", "TYPE_UINT8", "[ -1 ]"))
    if spec.has_keypoints:
        rows.append(("keypoints", "TYPE_FP32", f"[ -1, {spec.num_keypoints}, 3 ]"))
    return rows


def model_config(
    name: str, spec: ModelSpec, artifact_file: str, backend: str, max_batch: int, instances: int
) -> str:
    """The ``config.pbtxt`` of the python detector (Triton's ModelConfig in text format)."""
    outputs = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in _outputs(spec)
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


def _readme(name: str, spec: ModelSpec, artifact: Path, max_batch: int, instances: int) -> str:
    lines = [
        f"# Triton model repository: `{name}` ({spec.arch})",
        "",
        f"Written by `maskrt triton` for `{artifact.name}`. Serve it with `maskrt serve .`",
        "(a local Triton) or mount it in NVIDIA's Triton container with maskrt installed in it.",
        "",
        f"`{name}` is a Python-backend model that runs maskrt's Predictor on the artifact in",
        f"`{name}/1/`; dynamic batching on, at most {max_batch} images per execution, "
        f"{instances} instance(s).",
        "",
        "| tensor | type | shape (after the batch dimension) | meaning |",
        "|---|---|---|---|",
        f"| `{REQUEST_INPUT}` (input) | UINT8 | [-1] | the encoded image file (PNG, JPEG, ...) |",
        "| `num_detections` | INT32 | [1] | detections of this image |",
        "| `boxes` | FP32 | [-1, 4] | x1, y1, x2, y2, original-image pixels, by descending score |",
        "| `scores` | FP32 | [-1] | |",
        "| `labels` | INT32 | [-1] | 1..num_classes-1 |",
    ]
    if spec.has_masks:
        lines.append("| `masks` | UINT8 | [-1] | UTF-8 JSON list: COCO RLE of each pasted mask |")
    if spec.has_keypoints:
        lines.append(f"| `keypoints` | FP32 | [-1, {spec.num_keypoints}, 3] | x, y, score |")
    lines += [
        "",
        "One image per request (batch dimension 1); Triton batches requests. A request that",
        "fails (not an image, too large) gets its own error response; the other requests",
        "batched with it are answered.",
        "",
    ]
    return "\n".join(lines)


def write_repository(
    artifact: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    detector: str = "python",
    max_batch: int = 8,
    instances: int = 1,
    name: str = "maskrt",
    force: bool = False,
) -> Path:
    """Write a Triton model repository serving ``artifact`` to the folder ``out``."""
    src = Path(artifact)
    if not src.is_file():
        raise MaskrtError(f"{src} does not exist")
    if detector not in DETECTORS:
        raise MaskrtError(
            f"detector {detector!r} is not written yet; this maskrt writes {', '.join(DETECTORS)}"
        )
    if max_batch < 1 or instances < 1:
        raise MaskrtError("--max-batch and --instances must be at least 1")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise MaskrtError(f"model name {name!r}: use letters, digits, '-' and '_'")
    spec = artifact_spec(src)
    backend = _SUFFIX_BACKEND[src.suffix.lower()]
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not force:
        raise MaskrtError(f"{root} is not empty; pass --force to overwrite it")
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    artifact_file = f"model{src.suffix.lower()}"
    shutil.copy2(src, version / artifact_file)
    if backend == "tensorrt":  # the engine's sidecar goes with it
        from ..sidecar import sidecar_path

        shutil.copy2(sidecar_path(src), sidecar_path(version / artifact_file))
    atomic_write_text(version / "model.py", _MODEL_PY)
    atomic_write_text(
        root / name / "config.pbtxt",
        model_config(name, spec, artifact_file, backend, max_batch, instances),
    )
    atomic_write_text(root / "README.md", _readme(name, spec, src, max_batch, instances))
    return root
