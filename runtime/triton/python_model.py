"""The ``python`` detector inside Triton's Python backend: encoded images -> maskrt Predictor ->
detections (the tensors of :mod:`maskrt.runtime.triton.repository`).

:func:`decode_request` and :func:`encode_response` are plain numpy and tested outside Triton;
:class:`TritonPythonModel` is the glue Triton calls (``triton_python_backend_utils`` exists only
in Triton's Python stub). Tensors cross the stub by DLPack: its ``as_numpy``/``Tensor(name,
array)`` path (pybind11's numpy arrays) garbles arrays of two or more dimensions under numpy 2
(measured with Triton 2.51: every element read as the first byte, outputs sent empty), while
``np.from_dlpack`` and ``Tensor.from_dlpack`` carry them intact. All requests of one execution
(one image each) are predicted as one batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections
from maskrt.errors import MaskrtError

from ..images import decode_image
from .repository import REQUEST_INPUT


def decode_request(data: np.ndarray) -> np.ndarray:
    """The request's ``image`` tensor (UINT8 ``[1, L]``: one encoded image file) -> RGB uint8."""
    if data.dtype != np.uint8 or data.ndim != 2:
        raise MaskrtError(
            f"'{REQUEST_INPUT}' must be UINT8 [1, L] (an encoded image file), got "
            f"{data.dtype} {list(data.shape)}"
        )
    if data.shape[0] != 1:
        raise MaskrtError(f"one image per request, got {data.shape[0]} (Triton batches requests)")
    return decode_image(data.tobytes(), "the request's image")


def encode_response(
    dets: Detections, with_masks: bool, num_keypoints: int = 0
) -> dict[str, np.ndarray]:
    """One image's detections -> the response tensors (batch dimension 1)."""
    from maskrt.coco import encode_mask

    out: dict[str, np.ndarray] = {
        "num_detections": np.asarray([[len(dets)]], np.int32),
        "boxes": np.asarray(dets.boxes, np.float32).reshape(1, -1, 4),
        "scores": np.asarray(dets.scores, np.float32).reshape(1, -1),
        "labels": np.asarray(dets.labels, np.int32).reshape(1, -1),
    }
    if with_masks:
        rles = [] if dets.masks is None else [encode_mask(m) for m in dets.masks]
        document = json.dumps(rles).encode()
        out["masks"] = np.frombuffer(document, np.uint8).reshape(1, -1)
    if num_keypoints:
        keypoints = np.zeros((len(dets), num_keypoints, 3), np.float32)
        if dets.keypoints is not None:
            keypoints[:] = dets.keypoints
        out["keypoints"] = keypoints[None]
    return out


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
                    raise MaskrtError(f"the request has no '{REQUEST_INPUT}' input")
                images.append(decode_request(np.from_dlpack(tensor)))
                owners.append(i)
            except MaskrtError as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        try:
            dets = self.predictor.predict(images) if images else []
        except Exception as e:  # noqa: BLE001 - every request of the batch hears why
            error = pb_utils.TritonError(f"prediction failed: {type(e).__name__}: {e}")
            return [r or pb_utils.InferenceResponse(error=error) for r in responses]
        for i, d in zip(owners, dets):
            tensors = encode_response(d, self.with_masks, self.num_keypoints)
            responses[i] = pb_utils.InferenceResponse(
                [
                    # DLPack here exports writable, C-ordered arrays only
                    pb_utils.Tensor.from_dlpack(name, np.require(tensors[name], None, ["C", "W"]))
                    for name in self.outputs
                ]
            )
        return responses

    def finalize(self) -> None:
        self.predictor.close()
