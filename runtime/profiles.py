"""Optimisation-profile shapes for engine builds, from the ONNX inputs and the model spec.

Pure (no TensorRT): a dynamic dimension of the deploy graph's ``images`` input gets a range
that holds every image the spec can resize to; static dimensions are kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

Shape = tuple[int, ...]
Dim = int | str | None  # static size, symbolic name, or unknown
ShapeRange = tuple[Shape, Shape, Shape]  # min, opt, max

_SHAPE_ARG = re.compile(r"^([^:]+):(\d+(?:x\d+)*)$")


def parse_shape_args(args: Sequence[str]) -> dict[str, Shape]:
    """``["images:1x3x800x1344", ...]`` -> ``{"images": (1, 3, 800, 1344), ...}``."""
    shapes: dict[str, Shape] = {}
    for arg in args:
        m = _SHAPE_ARG.match(arg.strip())
        if m is None:
            raise MaskrtError(f"bad shape {arg!r}; write NAME:DxDx... e.g. images:1x3x800x1344")
        shapes[m.group(1)] = tuple(int(v) for v in m.group(2).split("x"))
    return shapes


def onnx_input_dims(path: str | os.PathLike[str]) -> dict[str, tuple[Dim, ...]]:
    """Input name -> dims (int static, str symbolic, None unknown) of an ONNX file."""
    from maskrt.onnxio import load_onnx

    model = load_onnx(path, weights=False)
    initializers = {i.name for i in model.graph.initializer}
    dims: dict[str, tuple[Dim, ...]] = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        shape = inp.type.tensor_type.shape
        dims[inp.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim
        )
    return dims


def default_profile(
    input_dims: Mapping[str, tuple[Dim, ...]], spec: ModelSpec, max_batch: int = 1
) -> dict[str, ShapeRange]:
    """min/opt/max shapes for the deploy contract's inputs.

    Images: height and width from 32 up to ``max_size`` rounded up to 32 (portrait or
    landscape), optimised for a landscape image resized to ``min_size`` x ``max_size``; a
    model that resizes every image to its ``fixed_size`` gets that size, padded, only.
    """
    for name in (contract.INPUT_IMAGES, contract.INPUT_IMAGE_SIZES):
        if name not in input_dims:
            raise MaskrtError(f"the graph has no input {name!r}: not a maskrt deploy graph")
    b, c, h, w = input_dims[contract.INPUT_IMAGES]
    canvas_h, canvas_w = spec.canvas_size()

    def pick(dim: Dim, lo: int, opt: int, hi: int) -> tuple[int, int, int]:
        return (dim, dim, dim) if isinstance(dim, int) and dim > 0 else (lo, opt, hi)

    bs = pick(b, 1, 1, max_batch)
    if spec.fixed_size is not None:
        hs, ws = pick(h, canvas_h, canvas_h, canvas_h), pick(w, canvas_w, canvas_w, canvas_w)
    else:
        opt_h = contract.round_to_divisible(spec.min_size)
        hs = pick(h, contract.SIZE_DIVISIBLE, opt_h, canvas_h)
        ws = pick(w, contract.SIZE_DIVISIBLE, canvas_w, canvas_w)
    channels = c if isinstance(c, int) and c > 0 else 3
    images = tuple((bs[i], channels, hs[i], ws[i]) for i in range(3))
    sizes = tuple((bs[i], 2) for i in range(3))
    return {
        contract.INPUT_IMAGES: (images[0], images[1], images[2]),
        contract.INPUT_IMAGE_SIZES: (sizes[0], sizes[1], sizes[2]),
    }


def apply_overrides(
    profile: Mapping[str, ShapeRange],
    mins: Mapping[str, Shape],
    opts: Mapping[str, Shape],
    maxs: Mapping[str, Shape],
) -> dict[str, ShapeRange]:
    """``profile`` with user shapes substituted; the batch of ``image_sizes`` follows ``images``."""
    out = dict(profile)
    for name in set(mins) | set(opts) | set(maxs):
        if name not in out:
            raise MaskrtError(f"no graph input {name!r} (inputs: {', '.join(sorted(out))})")
        lo, mid, hi = out[name]
        out[name] = (mins.get(name, lo), opts.get(name, mid), maxs.get(name, hi))
    img = out[contract.INPUT_IMAGES]
    if contract.INPUT_IMAGE_SIZES not in {*mins, *opts, *maxs}:
        out[contract.INPUT_IMAGE_SIZES] = ((img[0][0], 2), (img[1][0], 2), (img[2][0], 2))
    for name, (lo, mid, hi) in out.items():
        if not (len(lo) == len(mid) == len(hi)):
            raise MaskrtError(f"{name}: min/opt/max shapes have different ranks")
        if any(not (a <= b <= c) for a, b, c in zip(lo, mid, hi)):
            raise MaskrtError(
                f"{name}: need min <= opt <= max in every dimension, got {lo} {mid} {hi}"
            )
    return out
