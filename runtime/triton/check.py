"""Checking a Triton repository maskrt wrote: every config parses as Triton's ModelConfig, the
ensemble's steps fit together, and a detector's tensors are its artifact's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maskrt.errors import MaskrtError

from .facts import engine_detector_facts, onnx_detector_facts
from .layout import MODEL_FILES, PLATFORMS


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
