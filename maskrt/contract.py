"""The deploy graph's I/O contract, written once and imported by every stage.

An exported maskrt graph has two inputs and padded, fixed-rank outputs::

    images          float32 [B, 3, H, W]   resized RGB in [0, 1], padded to H, W multiples of 32
                                           with the spec's ``image_mean`` (so that the in-graph
                                           normalisation turns padding into torchvision's zeros).
    image_sizes     int32   [B, 2]         (height, width) of each resized image before padding:
                                           torchvision clips proposals and boxes to it.
    num_detections  int32   [B]            valid rows per image (rows >= n are padding)
    boxes           float32 [B, K, 4]      x1, y1, x2, y2 in input-tensor pixels
    scores          float32 [B, K]
    labels          int32   [B, K]         1..num_classes-1 (0 on padding rows)
    masks           float32 [B, K, M, M]   mask probabilities of the predicted class (Mask R-CNN;
                                           M: the spec's ``mask_size``, 28 for torchvision's head)
    keypoint_logits float32 [B, K, J, S, S]
                                           heatmap logits (Keypoint R-CNN; J, S: the spec's
                                           ``num_keypoints`` and ``keypoint_heatmap_size``, 17 and
                                           56 for torchvision's head): torchvision's
                                           heatmaps_to_keypoints resizes each heatmap to a
                                           RoI-dependent size, so the runtime decodes them
                                           (exactly, in numpy).

K is the spec's ``box_detections_per_img``. Rows are sorted by descending score, as torchvision
returns them. The ONNX metadata (``metadata_props``) carries the keys below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CONTRACT_VERSION = "1"
SIZE_DIVISIBLE = 32
MASK_SIZE = 28


def round_to_divisible(value: int) -> int:
    """``value`` rounded up to a multiple of SIZE_DIVISIBLE: a height or width of ``images``."""
    return int(math.ceil(value / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)


def batch_canvas(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The (H, W) of ``images`` for resized images of these (height, width): the largest of
    each, rounded up to SIZE_DIVISIBLE (torchvision's batching). The padding is the model's
    ``image_mean`` (normalised to torchvision's zeros inside the graph)."""
    heights, widths = zip(*sizes)
    return round_to_divisible(max(heights)), round_to_divisible(max(widths))


INPUT_IMAGES = "images"
INPUT_IMAGE_SIZES = "image_sizes"
OUTPUT_NUM_DETECTIONS = "num_detections"
OUTPUT_BOXES = "boxes"
OUTPUT_SCORES = "scores"
OUTPUT_LABELS = "labels"
OUTPUT_MASKS = "masks"
OUTPUT_KEYPOINTS = "keypoints"  # decoded keypoints (runtime side); not a deploy-graph output
OUTPUT_KEYPOINT_LOGITS = "keypoint_logits"
KEYPOINT_HEATMAP_SIZE = 56

# metadata_props keys of an exported graph
META_CONTRACT_VERSION = "maskrt.contract_version"
META_MODEL_SPEC = "maskrt.model_spec"  # ModelSpec.to_json()
META_PRECISION = "maskrt.precision"  # one of PRECISIONS
PRECISIONS = ("fp32", "fp16", "int8")
# INT8 graphs with groups kept in FP16 (`calibrate --fp16-groups`): JSON {group: "int8"|"fp16"}
# in graph order; absent when every group is INT8 (the graph is then the plain INT8 graph).
META_PRECISION_GROUPS = "maskrt.precision_groups"
META_SURGERED = "maskrt.surgered"  # "1" once RoIAlign units are plugin nodes
# "1" when exported with compact heads (data-dependent shapes inside: for ONNX Runtime, not for
# TensorRT); absent in graphs exported before the key existed.
META_COMPACT_HEADS = "maskrt.compact_heads"


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and symbolic shape of one graph input or output."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[str | int, ...]


def output_names(has_masks: bool, has_keypoints: bool) -> tuple[str, ...]:
    """Output names of a deploy graph, in graph order."""
    names = [OUTPUT_NUM_DETECTIONS, OUTPUT_BOXES, OUTPUT_SCORES, OUTPUT_LABELS]
    if has_masks:
        names.append(OUTPUT_MASKS)
    if has_keypoints:
        names.append(OUTPUT_KEYPOINT_LOGITS)
    return tuple(names)


def io_specs(
    detections_per_img: int,
    has_masks: bool,
    has_keypoints: bool,
    num_keypoints: int = 17,
    mask_size: int = MASK_SIZE,
    heatmap_size: int = KEYPOINT_HEATMAP_SIZE,
) -> tuple[TensorSpec, ...]:
    """The full contract for one model: the inputs first, then the outputs in graph order."""
    k = detections_per_img
    table = {
        OUTPUT_NUM_DETECTIONS: TensorSpec(OUTPUT_NUM_DETECTIONS, "int32", ("B",)),
        OUTPUT_BOXES: TensorSpec(OUTPUT_BOXES, "float32", ("B", k, 4)),
        OUTPUT_SCORES: TensorSpec(OUTPUT_SCORES, "float32", ("B", k)),
        OUTPUT_LABELS: TensorSpec(OUTPUT_LABELS, "int32", ("B", k)),
        OUTPUT_MASKS: TensorSpec(OUTPUT_MASKS, "float32", ("B", k, mask_size, mask_size)),
        OUTPUT_KEYPOINTS: TensorSpec(OUTPUT_KEYPOINTS, "float32", ("B", k, num_keypoints, 3)),
        OUTPUT_KEYPOINT_LOGITS: TensorSpec(
            OUTPUT_KEYPOINT_LOGITS,
            "float32",
            ("B", k, num_keypoints, heatmap_size, heatmap_size),
        ),
    }
    inputs = (
        TensorSpec(INPUT_IMAGES, "float32", ("B", 3, "H", "W")),
        TensorSpec(INPUT_IMAGE_SIZES, "int32", ("B", 2)),
    )
    return inputs + tuple(table[n] for n in output_names(has_masks, has_keypoints))
