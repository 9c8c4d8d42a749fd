"""``maskrt triton``: write a Triton model repository for a deploy artifact, in one of two
layouts (:mod:`.layout`), answering with the tensors of :mod:`.tensors`; the configs come from
:mod:`.configs`, the README from :mod:`.readme`, the check from :mod:`.check`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from maskrt.errors import InternalError, MaskrtError
from maskrt.fileio import atomic_write_text
from maskrt.specs import ModelSpec

from ..predictor import SUFFIX_BACKEND
from .configs import (
    detector_config,
    ensemble_config,
    model_config,
    post_config,
    pre_config,
    response_outputs,
)
from .facts import DetectorFacts, artifact_spec, engine_detector_facts, onnx_detector_facts
from .layout import MODEL_FILES, SPEC_FILE, STEP_SUFFIXES, plugin_folder
from .readme import ensemble_readme, python_readme
from .tensors import REQUEST_INPUT

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


# Where maskrt put the plugin library before the library moved into the detector's folder: a
# root folder Triton takes for a model, which stops the server at start (layout.plugin_folder).
_OLD_PLUGIN_FOLDER = "plugins"


def _fresh_model_folders(root: Path, names: list[str]) -> None:
    """Remove what an earlier `maskrt triton --force` left in the folders about to be written,
    and the root plugin folder an older maskrt wrote when it holds maskrt's libraries only."""
    for name in names:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    old = root / _OLD_PLUGIN_FOLDER
    if old.is_dir() and all(p.name.startswith("libmaskrt_roialign") for p in old.iterdir()):
        shutil.rmtree(old)


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
    atomic_write_text(root / "README.md", python_readme(name, spec, src, max_batch, instances))


def _write_ensemble(
    root: Path, src: Path, detector: str, name: str, max_batch: int, instances: int
) -> DetectorFacts:
    read = engine_detector_facts if detector == "tensorrt" else onnx_detector_facts
    facts = read(src, max_batch)
    pre, det, post = (name + s for s in STEP_SUFFIXES)
    responses = response_outputs(facts.spec)
    for model, entry in ((pre, "PreprocessModel"), (post, "PostprocessModel")):
        (root / model / "1").mkdir(parents=True)
        atomic_write_text(root / model / "1" / "model.py", _model_py(entry))
        atomic_write_text(root / model / "1" / SPEC_FILE, facts.spec.to_json())
    (root / det / "1").mkdir(parents=True)
    shutil.copy2(src, root / det / "1" / MODEL_FILES[detector])
    if detector == "tensorrt":  # the sidecar goes beside the plan (Triton ignores it)
        from ..sidecar import sidecar_path

        shutil.copy2(sidecar_path(src), sidecar_path(root / det / "1" / MODEL_FILES[detector]))
    (root / name / "1").mkdir(parents=True)  # Triton wants a version folder, empty for ensembles
    atomic_write_text(root / pre / "config.pbtxt", pre_config(pre, facts, instances, REQUEST_INPUT))
    atomic_write_text(root / det / "config.pbtxt", detector_config(det, detector, facts, instances))
    atomic_write_text(root / post / "config.pbtxt", post_config(post, facts, instances, responses))
    atomic_write_text(
        root / name / "config.pbtxt", ensemble_config(name, facts, REQUEST_INPUT, responses)
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
        root / "README.md", ensemble_readme(name, detector, facts, src, instances, plugin)
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
        from .check import check_repository

        problems = check_repository(root)
        if problems:
            raise InternalError(f"the repository in {root} is inconsistent: {problems[0]}")
    return root
