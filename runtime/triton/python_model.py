"""maskrt's models inside Triton's Python backend: the ``python`` detector (encoded images ->
maskrt Predictor -> detections, the tensors of :mod:`maskrt.runtime.triton.tensors`) and the
ensemble's pre- and post-processing steps (:mod:`maskrt.runtime.triton.layout`).

:func:`decode_request` and :func:`encode_response` are plain numpy and tested outside Triton;
:class:`TritonPythonModel` is the glue Triton calls (``triton_python_backend_utils`` exists only
in Triton's Python stub). Tensors cross the stub by DLPack: its ``as_numpy``/``Tensor(name,
array)`` path (pybind11's numpy arrays) garbles arrays of two or more dimensions under numpy 2
(measured with Triton 2.51: every element read as the first byte, outputs sent empty), while
``np.from_dlpack`` and ``Tensor.from_dlpack`` carry them intact. All requests of one execution
(one image each) are predicted as one batch.

A request that fails gets its own error response with a Triton error code: INVALID_ARG for what
the client got wrong (:class:`RequestError`), INTERNAL (``TritonError``'s default) for the rest.
Read in triton-inference-server's sources of Triton 2.51 (python_backend and core branch r24.10,
server tag v2.51.0): python_backend src/pb_stub.cc:1639-1686 (``TritonError(message, code)``;
codes UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS,
CANCELLED, names the wheel's 3.11 stub carries too), server src/http_server.cc:98-120
(INVALID_ARG -> HTTP 400, INTERNAL -> 500) and src/grpc/grpc_utils.cc:97-98 (INVALID_ARG -> gRPC
INVALID_ARGUMENT); tests/test_triton.py asserts the statuses on the real server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from maskrt import contract
from maskrt.detections import Detections
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from ..images import decode_image
from ..postprocess import postprocess
from ..preprocess import Batch, preprocess, target_size
from .layout import SPEC_FILE
from .tensors import ORIGINAL_SIZE, REQUEST_INPUT, RESPONSE


class RequestError(MaskrtError):
    """The client's request is wrong (bytes that are no image, an image too large, a tensor of
    the wrong type or shape): answered as a client error, INVALID_ARG (HTTP 400, gRPC
    INVALID_ARGUMENT); anything else that fails is ours, INTERNAL (HTTP 500)."""


def error_status(error: Exception) -> tuple[str, str]:
    """(Triton error code name, message) of the error response to a request that failed with
    ``error``: the name is a ``pb_utils.TritonError`` attribute (Python backend >= 23.09)."""
    if isinstance(error, RequestError):
        return "INVALID_ARG", str(error)
    if isinstance(error, MaskrtError):
        return "INTERNAL", str(error)
    return "INTERNAL", f"{type(error).__name__}: {error}"


def dlpack_ready(array: np.ndarray) -> np.ndarray:
    """``array`` as python_backend's ``Tensor.from_dlpack`` takes it: C-ordered and writable
    (numpy exports those only) and, when empty, with the strides of its shape counting each
    empty dimension as one. numpy exports zero strides for an empty array, which the stub's
    contiguity check refuses (python_backend src/pb_tensor.cc, ``FromDLPackCapsule``: every
    dimension but the first that is not 1 must have the C-order stride), so a response with
    no detections failed as INTERNAL."""
    array = np.require(array, None, ["C", "W"])
    if array.size:
        return array
    strides, step = [], array.itemsize
    for dim in reversed(array.shape):
        strides.append(step)
        step *= max(dim, 1)
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, array.dtype), array.shape, tuple(reversed(strides))
    )


def _error_response(pb_utils: Any, error: Exception, prefix: str = "") -> Any:
    """An error response for Triton carrying :func:`error_status`'s code."""
    code, message = error_status(error)
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(prefix + message, getattr(pb_utils.TritonError, code))
    )


def decode_request(data: np.ndarray) -> np.ndarray:
    """The request's ``image`` tensor (UINT8 ``[1, L]``: one encoded image file) -> RGB uint8;
    a :class:`RequestError` for anything else."""
    if data.dtype != np.uint8 or data.ndim != 2:
        raise RequestError(
            f"'{REQUEST_INPUT}' must be UINT8 [1, L] (an encoded image file), got "
            f"{data.dtype} {list(data.shape)}"
        )
    if data.shape[0] != 1:
        raise RequestError(f"one image per request, got {data.shape[0]} (Triton batches requests)")
    try:
        return decode_image(data.tobytes(), "the request's image")
    except MaskrtError as e:  # what decode_image refuses is the client's file
        raise RequestError(str(e)) from None


def check_resizable(image: np.ndarray, spec: ModelSpec) -> None:
    """A :class:`RequestError` for an image the model's resize refuses (too elongated): found
    per request, so that one such image does not fail the batch it was put in."""
    try:
        target_size(image, spec)
    except MaskrtError as e:
        raise RequestError(str(e)) from None


def encode_response(
    dets: Detections, with_masks: bool, num_keypoints: int = 0
) -> dict[str, np.ndarray]:
    """One image's detections -> the response tensors (batch dimension 1)."""
    from maskrt.coco import encode_mask

    k = len(dets)
    arrays: dict[str, Any] = {
        "num_detections": [[k]],
        "boxes": np.reshape(dets.boxes, (1, -1, 4)),
        "scores": np.reshape(dets.scores, (1, -1)),
        "labels": np.reshape(dets.labels, (1, -1)),
    }
    if with_masks:
        rles = [] if dets.masks is None else [encode_mask(m) for m in dets.masks]
        arrays["masks"] = np.frombuffer(json.dumps(rles).encode(), np.uint8).reshape(1, -1)
    if num_keypoints:
        keypoints = np.zeros((k, num_keypoints, 3), np.float32)
        if dets.keypoints is not None:
            keypoints[:] = dets.keypoints
        arrays["keypoints"] = keypoints[None]
    # names and element types from the one table of response tensors
    return {n: np.asarray(a, RESPONSE[n].dtype) for n, a in arrays.items()}


def preprocess_request(
    data: np.ndarray, spec: ModelSpec, canvas: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The ensemble's pre-processing of one request: encoded image -> the detector's inputs
    padded to ``canvas`` (H, W), and the original (height, width), each with batch dimension 1."""
    image = decode_request(data)
    try:
        batch = preprocess([image], spec, fixed_size=canvas)
    except MaskrtError as e:  # what pre-processing refuses (an image too elongated) is the client's
        raise RequestError(str(e)) from None
    return {
        contract.INPUT_IMAGES: batch.images,
        contract.INPUT_IMAGE_SIZES: batch.image_sizes,
        ORIGINAL_SIZE: np.asarray([batch.original_sizes[0]], np.int32),
    }


def postprocess_request(tensors: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """The ensemble's post-processing of one request: the detector's outputs (batch dimension
    1; ``num_detections`` [1, 1]) with its image sizes -> the response tensors."""
    resized = tensors[contract.INPUT_IMAGE_SIZES].reshape(1, 2).astype(np.int32)
    h, w = (int(v) for v in tensors[ORIGINAL_SIZE].reshape(2))
    outputs = dict(tensors)
    outputs[contract.OUTPUT_NUM_DETECTIONS] = tensors[contract.OUTPUT_NUM_DETECTIONS].reshape(1)
    batch = Batch(np.zeros((1, 3, 1, 1), np.float32), resized, ((h, w),))
    (dets,) = postprocess(outputs, batch)
    return encode_response(dets, spec.has_masks, spec.num_keypoints if spec.has_keypoints else 0)


def _read_spec(args: dict[str, str]) -> tuple[ModelSpec, dict[str, Any], Path]:
    """The model's spec (from its version folder), its config and its version folder."""
    config = json.loads(args["model_config"])
    folder = Path(args["model_repository"]) / args["model_version"]
    spec = ModelSpec.from_json((folder / SPEC_FILE).read_text())
    return spec, config, folder


def _respond(requests: list[Any], inputs: list[str], outputs: list[str], fn: Any) -> list[Any]:
    """Run ``fn(tensors by name) -> tensors by name`` on each request; a request that fails
    gets its own error response (:func:`error_status`)."""
    import triton_python_backend_utils as pb_utils

    responses = []
    for request in requests:
        try:
            tensors = {}
            for name in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise RequestError(f"the request has no '{name}' input")
                tensors[name] = np.from_dlpack(tensor)
            result = fn(tensors)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor.from_dlpack(n, dlpack_ready(result[n])) for n in outputs]
                )
            )
        except Exception as e:  # noqa: BLE001 - the request hears why; the batch goes on
            responses.append(_error_response(pb_utils, e))
    return responses


class PreprocessModel:
    """The ensemble's pre-processing step (``NAME_pre``)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.spec, config, _ = _read_spec(args)
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.canvas = (int(params["canvas_height"]), int(params["canvas_width"]))
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(
            requests,
            [REQUEST_INPUT],
            self.outputs,
            lambda t: preprocess_request(t[REQUEST_INPUT], self.spec, self.canvas),
        )


class PostprocessModel:
    """The ensemble's post-processing step (``NAME_post``)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.spec, config, _ = _read_spec(args)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(
            requests, self.inputs, self.outputs, lambda t: postprocess_request(t, self.spec)
        )


class TritonPythonModel:
    """Triton's Python-backend entry points for the python detector."""

    def initialize(self, args: dict[str, str]) -> None:
        from maskrt.runtime import load_predictor

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.predictor = load_predictor(folder / params["artifact"], backend=params["backend"])
        self.outputs = [o["name"] for o in config["output"]]
        spec = self.predictor.spec
        self.with_masks = spec.has_masks
        self.num_keypoints = spec.num_keypoints if spec.has_keypoints else 0

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses: list[Any] = [None] * len(requests)
        images: list[np.ndarray] = []
        owners: list[int] = []  # the request of each image
        for i, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, REQUEST_INPUT)
                if tensor is None:
                    raise RequestError(f"the request has no '{REQUEST_INPUT}' input")
                image = decode_request(np.from_dlpack(tensor))
                check_resizable(image, self.predictor.spec)
                images.append(image)
                owners.append(i)
            except Exception as e:  # noqa: BLE001 - this request hears why; the batch goes on
                responses[i] = _error_response(pb_utils, e)
        try:
            dets = self.predictor.predict(images) if images else []
        except Exception as e:  # noqa: BLE001 - every request of the batch hears why
            return [r or _error_response(pb_utils, e, "prediction failed: ") for r in responses]
        for i, d in zip(owners, dets):
            tensors = encode_response(d, self.with_masks, self.num_keypoints)
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor.from_dlpack(name, dlpack_ready(tensors[name]))
                    for name in self.outputs
                ]
            )
        return responses

    def finalize(self) -> None:
        self.predictor.close()
