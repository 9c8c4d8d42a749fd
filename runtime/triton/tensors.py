"""The tensors of a maskrt Triton repository, written once: what a client sends and gets back
(both layouts answer alike), and what the ensemble's steps pass on.

One image per request; Triton batches the requests (dynamic batching, ragged inputs). The
request is :data:`REQUEST_INPUT`, UINT8 ``[-1]`` after Triton's batch dimension (always 1 per
request): the encoded image file (PNG, JPEG, ...), as bytes. The response is
:data:`RESPONSE_TENSORS` (:func:`response_tensors` picks a model's); the config writers, the
repository README and :func:`~maskrt.runtime.triton.python_model.encode_response` all read it.

No BYTES tensors: they cannot cross the Python backend's stub by DLPack, and its numpy path is
broken under numpy 2 (see :mod:`.python_model`). A request that fails (bytes that are no
image, an image too large) gets an error response of its own, a client error (INVALID_ARG: HTTP
400, gRPC INVALID_ARGUMENT; INTERNAL is left for maskrt's own failures); the other requests of
the batch are answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskrt.specs import ModelSpec

REQUEST_INPUT = "image"
ORIGINAL_SIZE = "original_size"  # ensemble pre -> post: (height, width) of the decoded image

# numpy dtype name -> Triton's ModelConfig data type.
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8",
}

KEYPOINTS_DIM = "K"  # stands for the spec's num_keypoints in RESPONSE_TENSORS' dims


@dataclass(frozen=True)
class ResponseTensor:
    """One response tensor: numpy dtype name, dims after the batch dimension (-1: dynamic,
    :data:`KEYPOINTS_DIM`: the spec's keypoint count), its meaning, and the head it needs."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    meaning: str
    head: str | None = None  # "masks" / "keypoints": only models with that head answer it


RESPONSE_TENSORS = (
    ResponseTensor("num_detections", "int32", (1,), "detections of this image"),
    ResponseTensor(
        "boxes", "float32", (-1, 4), "x1, y1, x2, y2, original-image pixels, by descending score"
    ),
    ResponseTensor("scores", "float32", (-1,), ""),
    ResponseTensor("labels", "int32", (-1,), "1..num_classes-1"),
    ResponseTensor(
        "masks", "uint8", (-1,), "UTF-8 JSON list: COCO RLE of each pasted mask", "masks"
    ),
    ResponseTensor("keypoints", "float32", (-1, KEYPOINTS_DIM, 3), "x, y, score", "keypoints"),
)
RESPONSE = {t.name: t for t in RESPONSE_TENSORS}


def response_tensors(spec: ModelSpec) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, numpy dtype name, dims after the batch dimension) of each tensor a model of
    ``spec`` answers, in :data:`RESPONSE_TENSORS`' order."""
    heads = {"masks": spec.has_masks, "keypoints": spec.has_keypoints}
    dims = {KEYPOINTS_DIM: spec.num_keypoints}
    return [
        (t.name, t.dtype, tuple(int(dims.get(str(d), d)) for d in t.dims))
        for t in RESPONSE_TENSORS
        if t.head is None or heads[t.head]
    ]
