"""``maskrt triton``: a Triton model repository for a deploy artifact.

Two layouts answer the same requests with the same tensors:

* ``python`` detector: one Python-backend model that decodes encoded images, runs maskrt's
  :class:`~maskrt.runtime.Predictor` (any backend) on the artifact copied into it and answers
  with detections in original-image pixels; each execution's images are predicted as one batch.
  The only layout the Triton build this workplace installs can run (it has no GPU backends).
* ``tensorrt`` / ``onnxruntime`` detector: an ensemble of pre-processing, the artifact on
  Triton's own TensorRT or ONNX Runtime backend, and post-processing (:mod:`.ensemble`).

Both answer one image per request with the tensors of :mod:`.tensors`, the one table of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt.errors import InternalError, MaskrtError
from maskrt.fileio import atomic_write_text
from maskrt.specs import ModelSpec

from ..predictor import SUFFIX_BACKEND
from .layout import SPEC_FILE, STEP_SUFFIXES, plugin_folder
from .tensors import REQUEST_INPUT, RESPONSE, TRITON_TYPES, response_tensors

if TYPE_CHECKING:
    from .ensemble import DetectorFacts

DETECTORS = ("auto", "python", "onnxruntime", "tensorrt")


# Repository-side file of the Python-backend model: the real code is maskrt.runtime.triton's
# python_model, so that the repository stays small and the code is tested where it lives.
def _model_py(entry: str) -> str:
    """The repository-side model.py of a Python-backend model: the real code is
    maskrt.runtime.triton's python_model, so the repository stays small and the code is tested
    where it lives. Triton's Python backend calls the class TritonPythonModel."""
    return f'''"""maskrt model for Triton's Python backend (written by `maskrt triton`)."""

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

from maskrt.runtime.triton.python_model import {entry} as TritonPythonModel  # noqa: E402,F401
'''


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


def _outputs(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(name, Triton data type, dims without the batch dimension) of each response tensor."""
    from .ensemble import _dims

    return [(n, TRITON_TYPES[t], _dims(d)) for n, t, d in response_tensors(spec)]


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


def _tensor_rows(spec: ModelSpec) -> list[str]:
    """The README's table of the request and response tensors (both layouts share them)."""
    rows = [
        "| tensor | type | shape (after the batch dimension) | meaning |",
        "|---|---|---|---|",
        f"| `{REQUEST_INPUT}` (input) | UINT8 | [-1] | the encoded image file (PNG, JPEG, ...) |",
    ]
    for name, dtype, dims in response_tensors(spec):
        meaning = RESPONSE[name].meaning
        shape = "[" + ", ".join(str(d) for d in dims) + "]"
        kind = TRITON_TYPES[dtype].removeprefix("TYPE_")
        rows.append(f"| `{name}` | {kind} | {shape} |" + (f" {meaning} |" if meaning else " |"))
    return rows


def _ensemble_readme(
    name: str,
    detector: str,
    facts: DetectorFacts,
    artifact: Path,
    instances: int,
    plugin: Path | None,
) -> str:
    from .ensemble import MODEL_FILES, PLATFORMS

    h, w = facts.canvas
    backend_config = ""
    lines = [
        f"# Triton model repository: `{name}` ({facts.spec.name})",
        "",
        f"Written by `maskrt triton --detector {detector}` for `{artifact.name}`: an ensemble.",
        "",
        "| model | runs | what |",
        "|---|---|---|",
        f"| `{name}` | ensemble | what clients call: the three steps below |",
        f"| `{name}_pre` | Python backend | decodes the image, resizes it like torchvision and "
        f"pads it to {h}x{w} |",
        f"| `{name}_detector` | `{PLATFORMS[detector]}` | `{MODEL_FILES[detector]}`, batches of "
        f"up to {facts.max_batch}, {instances} instance(s) |",
        f"| `{name}_post` | Python backend | boxes and keypoints to original pixels, masks "
        "pasted and RLE-encoded |",
        "",
        *_tensor_rows(facts.spec),
        "",
        "Run it on a GPU in NVIDIA's Triton container (the Python steps need `pip install maskrt`,",
        "the base install: numpy, pycocotools, pillow):",
        "",
    ]
    if facts.uses_plugins:
        folder = plugin_folder(name)
        from maskrt.plugins import PLUGIN_AUTOREG_LIBRARY

        library = plugin.name if plugin is not None else PLUGIN_AUTOREG_LIBRARY
        where = f"/models/{folder}/{library}"
        if plugin is not None:
            lines.append(f"The engine uses maskrt's RoIAlign plugin: `{folder}/{library}`.")
        else:
            lines.append(
                "The engine uses maskrt's RoIAlign plugin, and this machine has no build of it: "
                "build maskrt with TensorRT (plugins/multilevel_roialign/README.md) and put "
                f"`{library}` in "
                f"`{folder}/`."
            )
        lines.append(
            "It sits beside the detector's config.pbtxt, where Triton looks for no model (every "
            "folder of the repository's root is a model to Triton, and a `plugins/` folder there "
            "stops it at start). TensorRT's backend opens it from `--backend-config`, and it "
            "registers its creators as it opens (it is linked to libnvinfer)."
        )
        lines.append("")
        backend_config = f" --backend-config=tensorrt,plugins={where}"
    lines += [
        "```",
        "docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
        '  -v "$PWD":/models nvcr.io/nvidia/tritonserver:<release>-py3 \\',
        '  bash -c "pip install maskrt && '
        f'tritonserver --model-repository=/models{backend_config}"',
        "```",
        "",
    ]
    if detector == "tensorrt":
        lines += [
            "The engine must come from the same TensorRT release as the container's (its "
            "sidecar names the one it was built with).",
            "",
        ]
    return "\n".join(lines)


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
        *_tensor_rows(spec),
    ]
    lines += [
        "",
        "One image per request (batch dimension 1); Triton batches requests. A request that",
        "fails (not an image, too large) gets its own error response, HTTP 400 / gRPC",
        "INVALID_ARGUMENT; the other requests batched with it are answered.",
        "",
    ]
    return "\n".join(lines)


def resolve_detector(artifact: Path, detector: str) -> str:
    """The detector layout for ``artifact``: ``auto`` is the TensorRT ensemble for an engine
    and the python detector otherwise (it runs on any Triton, this workplace's included)."""
    suffix = artifact.suffix.lower()
    if detector not in DETECTORS:
        raise MaskrtError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector == "auto":
        return "tensorrt" if SUFFIX_BACKEND.get(suffix) == "tensorrt" else "python"
    if detector != "python" and SUFFIX_BACKEND.get(suffix) != detector:
        needs = next(s for s, b in SUFFIX_BACKEND.items() if b == detector)
        raise MaskrtError(f"the {detector} detector serves a {needs} file, not {artifact.name}")
    return detector


def _fresh_model_folders(root: Path, names: list[str]) -> None:
    """Remove what an earlier `maskrt triton --force` left in the folders about to be written."""
    for name in names:
        if (root / name).is_dir():
            shutil.rmtree(root / name)


def _write_python(
    root: Path, src: Path, spec: ModelSpec, name: str, max_batch: int, instances: int
) -> None:
    backend = SUFFIX_BACKEND[src.suffix.lower()]
    version = root / name / "1"
    version.mkdir(parents=True)
    artifact_file = f"model{src.suffix.lower()}"
    shutil.copy2(src, version / artifact_file)
    if backend == "tensorrt":  # the engine's sidecar goes with it
        from ..sidecar import sidecar_path

        shutil.copy2(sidecar_path(src), sidecar_path(version / artifact_file))
    atomic_write_text(version / "model.py", _model_py("TritonPythonModel"))
    atomic_write_text(
        root / name / "config.pbtxt",
        model_config(name, spec, artifact_file, backend, max_batch, instances),
    )
    atomic_write_text(root / "README.md", _readme(name, spec, src, max_batch, instances))


def _write_ensemble(
    root: Path, src: Path, detector: str, name: str, max_batch: int, instances: int
) -> DetectorFacts:
    from . import ensemble as e

    read = e.engine_detector_facts if detector == "tensorrt" else e.onnx_detector_facts
    facts = read(src, max_batch)
    pre, det, post = (name + s for s in e.STEP_SUFFIXES)
    responses = _outputs(facts.spec)
    for model, entry in ((pre, "PreprocessModel"), (post, "PostprocessModel")):
        (root / model / "1").mkdir(parents=True)
        atomic_write_text(root / model / "1" / "model.py", _model_py(entry))
        atomic_write_text(root / model / "1" / SPEC_FILE, facts.spec.to_json())
    (root / det / "1").mkdir(parents=True)
    shutil.copy2(src, root / det / "1" / e.MODEL_FILES[detector])
    if detector == "tensorrt":  # the sidecar goes beside the plan (Triton ignores it)
        from ..sidecar import sidecar_path

        shutil.copy2(sidecar_path(src), sidecar_path(root / det / "1" / e.MODEL_FILES[detector]))
    (root / name / "1").mkdir(parents=True)  # Triton wants a version folder, empty for ensembles
    atomic_write_text(
        root / pre / "config.pbtxt", e.pre_config(pre, facts, instances, REQUEST_INPUT)
    )
    atomic_write_text(
        root / det / "config.pbtxt", e.detector_config(det, detector, facts, instances)
    )
    atomic_write_text(
        root / post / "config.pbtxt", e.post_config(post, facts, instances, responses)
    )
    atomic_write_text(
        root / name / "config.pbtxt", e.ensemble_config(name, facts, REQUEST_INPUT, responses)
    )
    plugin = None
    if facts.uses_plugins:
        # Triton's TensorRT backend only dlopens ``plugins=`` libraries: the self-registering one
        # (plugins/multilevel_roialign/README.md#loading).
        from maskrt.plugins import plugin_autoreg_library_path

        plugin = plugin_autoreg_library_path()
        if plugin is not None:
            shutil.copy2(plugin, root / plugin_folder(name) / plugin.name)
    atomic_write_text(
        root / "README.md", _ensemble_readme(name, detector, facts, src, instances, plugin)
    )
    return facts


def _can_check() -> bool:
    """Whether Triton's ModelConfig protobuf (tritonclient, the serve extra) is here."""
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def write_repository(
    artifact: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    detector: str = "auto",
    max_batch: int = 8,
    instances: int = 1,
    name: str = "maskrt",
    force: bool = False,
) -> Path:
    """Write a Triton model repository serving ``artifact`` to the folder ``out``: the python
    detector, or an ensemble around Triton's TensorRT / ONNX Runtime backend
    (:func:`resolve_detector`). Where tritonclient is installed, the written configs are parsed
    with Triton's ModelConfig and checked against each other and the artifact before returning."""
    src = Path(artifact)
    if not src.is_file():
        raise MaskrtError(f"{src} does not exist")
    detector = resolve_detector(src, detector)
    if max_batch < 1 or instances < 1:
        raise MaskrtError("--max-batch and --instances must be at least 1")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise MaskrtError(f"model name {name!r}: use letters, digits, '-' and '_'")
    spec = artifact_spec(src)
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not force:
        raise MaskrtError(f"{root} is not empty; pass --force to overwrite it")
    _fresh_model_folders(root, [name] + [name + s for s in STEP_SUFFIXES])
    if detector == "python":
        _write_python(root, src, spec, name, max_batch, instances)
    else:
        _write_ensemble(root, src, detector, name, max_batch, instances)
    if _can_check():
        from .ensemble import check_repository

        problems = check_repository(root)
        if problems:
            raise InternalError(f"the repository in {root} is inconsistent: {problems[0]}")
    return root
