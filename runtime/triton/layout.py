"""The folders and files of a maskrt Triton repository: the names the writer lays down and the
models read back (written once here, imported by both)."""

from __future__ import annotations

SPEC_FILE = "maskrt_spec.json"  # the model spec beside a pre/post-processing model
STEP_SUFFIXES = ("_pre", "_detector", "_post")  # ensemble NAME's step models: NAME + suffix
PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}
MODEL_FILES = {"tensorrt": "model.plan", "onnxruntime": "model.onnx"}  # Triton's default names


def plugin_folder(name: str) -> str:
    """The repository folder holding the TensorRT plugin library of ensemble ``name``: its
    detector model's folder, beside config.pbtxt. Triton takes every folder of the repository's
    root for a model (a ``plugins/`` folder there stops the server at start) and only the
    numeric folders inside a model's folder for versions; plain files there it leaves alone."""
    return name + STEP_SUFFIXES[1]
