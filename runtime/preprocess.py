"""Images -> the deploy graph's inputs, as torchvision's ``GeneralizedRCNNTransform`` resizes.

The deploy graph (see :mod:`maskrt.contract`) normalises inside, so the runtime only resizes
and pads: images stay in [0, 1] and the padding is the spec's ``image_mean``, which the graph's
``(x - mean) / std`` turns into the zeros that torchvision pads with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskrt.contract import batch_canvas
from maskrt.errors import MaskrtError
from maskrt.specs import CUSTOM_ARCH, ModelSpec

from .interpolate import resize_image_planes


@dataclass(frozen=True)
class Batch:
    """Graph inputs plus what postprocessing needs to map results back.

    images          float32 [B, 3, H, W]  resized RGB in [0, 1], mean-padded to multiples of 32
    image_sizes     int32   [B, 2]        (height, width) of each resized image
    original_sizes  (height, width) of each input image
    """

    images: np.ndarray
    image_sizes: np.ndarray
    original_sizes: tuple[tuple[int, int], ...]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """torchvision's output size: scale so the short side is ``min_size`` unless the long side
    would exceed ``max_size``; ``F.interpolate(recompute_scale_factor=True)`` floors."""
    return ModelSpec(arch=CUSTOM_ARCH, min_size=min_size, max_size=max_size).resized_size(
        height, width
    )


def target_size(image: np.ndarray, spec: ModelSpec) -> tuple[int, int]:
    """The (height, width) torchvision's transform for ``spec`` resizes ``image`` to."""
    check_image(image)
    h, w = spec.resized_size(image.shape[0], image.shape[1])
    if h < 1 or w < 1:
        raise MaskrtError(
            f"image of {image.shape[1]}x{image.shape[0]} pixels is too elongated to resize"
        )
    return h, w


def resize_image(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> float32 [3, h, w] in [0, 1], resized like torchvision's
    transform for ``spec`` (its min/max size, or its fixed size)."""
    h, w = target_size(image, spec)
    # A linear resize commutes with torchvision's per-channel normalisation up to rounding.
    return resize_image_planes(image, np.empty((3, h, w), np.float32))


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MaskrtError(
            f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {list(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise MaskrtError(f"empty image of shape {list(image.shape)}")


def preprocess(
    images: Sequence[np.ndarray],
    spec: ModelSpec,
    fixed_size: tuple[int, int] | None = None,
) -> Batch:
    """Resize and batch RGB uint8 [H, W, 3] images for the deploy graph.

    ``fixed_size`` pads to that (H, W) instead of the batch's own size (an engine built for
    one shape); it must hold every resized image and be a multiple of 32.
    """
    if not images:
        raise MaskrtError("no images to preprocess")
    sizes = [target_size(im, spec) for im in images]
    if fixed_size is None:
        height, width = batch_canvas(sizes)
    else:
        height, width = fixed_size
        if any(h > height or w > width for h, w in sizes):
            raise MaskrtError(f"a resized image {max(sizes)} does not fit the fixed {fixed_size}")
    batch = np.empty((len(images), 3, height, width), np.float32)
    mean = np.asarray(spec.image_mean, np.float32)[:, None, None]
    for i, (image, (h, w)) in enumerate(zip(images, sizes)):
        resize_image_planes(image, batch[i, :, :h, :w])  # straight into its slot
        batch[i, :, :h, w:] = mean
        batch[i, :, h:, :] = mean
    return Batch(
        images=batch,
        image_sizes=np.asarray(sizes, np.int32).reshape(len(images), 2),
        original_sizes=tuple((int(im.shape[0]), int(im.shape[1])) for im in images),
    )
