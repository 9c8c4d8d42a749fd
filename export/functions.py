"""The ONNX model-local function that defines ``maskrt::MultiScaleRoIAlign`` in standard ops.

Body (per call, with M = B * N RoIs)::

    level    = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)) - k_min
    idx_l    = NonZero(level == l)                           for every level l
    pooled_l = RoiAlign(feature_l, rois[idx_l] * spatial_scales[l], batch_index[idx_l])
    out      = Concat(pooled_l)[position of each RoI in Concat(idx_l)], reshaped to [B, N, C, P, P]

Each RoI is pooled once, from its own level, as torchvision's MultiScaleRoIAlign does (pooling
every RoI from every level and selecting costs L times the work). The shapes inside are
data-dependent (NonZero), never the output's; there is no Loop or If. All constants come from
the node's attributes (``ref_attr_name``), so one function serves the box, mask and keypoint
units; ONNX Runtime inlines it and runs the file unchanged. Scaling the RoIs before RoiAlign
(spatial_scale=1) is exact: the FPN scales are powers of two.
"""

from __future__ import annotations

import math
from typing import Any

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper

from maskrt.plugins.contract import LEVEL_EPS, UNIT_DOMAIN, UNIT_OP_TYPE

ATTRIBUTE_NAMES = (
    "output_size",
    "sampling_ratio",
    "aligned",
    "spatial_scales",
    "canonical_scale",
    "canonical_level",
)


def _ref(name: str, attr_type: Any, ref: str) -> AttributeProto:
    a = AttributeProto()
    a.name = name
    a.type = attr_type
    a.ref_attr_name = ref
    return a


def _const(name: str, value: float | int | list[int]) -> onnx.NodeProto:
    if isinstance(value, list):
        t = helper.make_tensor(name, TensorProto.INT64, [len(value)], value)
    elif isinstance(value, int):
        t = helper.make_tensor(name, TensorProto.INT64, [], [value])
    else:
        t = helper.make_tensor(name, TensorProto.FLOAT, [], [value])
    return helper.make_node("Constant", [], [name], value=t)


def multiscale_roi_align_function(num_levels: int, opset: int) -> FunctionProto:
    """``maskrt::MultiScaleRoIAlign(feature_0, ..., feature_{L-1}, rois) -> pooled``."""
    feats = [f"feature_{i}" for i in range(num_levels)]
    n: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        n.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    # Attribute-driven constants.
    scales = helper.make_node("Constant", [], ["scales"])
    scales.attribute.append(_ref("value_floats", AttributeProto.FLOATS, "spatial_scales"))
    canon_scale = helper.make_node("Constant", [], ["canon_scale_i"])
    canon_scale.attribute.append(_ref("value_int", AttributeProto.INT, "canonical_scale"))
    canon_level = helper.make_node("Constant", [], ["canon_level_i"])
    canon_level.attribute.append(_ref("value_int", AttributeProto.INT, "canonical_level"))
    n += [scales, canon_scale, canon_level]
    n += [
        _const("ln2", math.log(2.0)),
        _const("eps", LEVEL_EPS),
        _const("zero", 0),
        _const("one", 1),
        _const("last", -1),
        _const("shape_m4", [-1, 4]),
        _const("axes0", [0]),
        _const("axis_from1", [1]),
        _const("axis_big", [2**62]),
        _const("i0", [0]),
        _const("i1", [1]),
        _const("i2", [2]),
        _const("i3", [3]),
        _const("i4", [4]),
    ]
    node("Cast", ["canon_scale_i"], "canon_scale", to=TensorProto.FLOAT)
    node("Cast", ["canon_level_i"], "canon_level", to=TensorProto.FLOAT)

    # FPN level range from the finest and coarsest scales: k = -log2(scale).
    node("Log", ["scales"], "log_scales")
    node("Div", ["log_scales", "ln2"], "log2_scales")
    node("Neg", ["log2_scales"], "neg_levels")
    node("Round", ["neg_levels"], "levels_f")
    node("Gather", ["levels_f", "zero"], "k_min", axis=0)
    node("Gather", ["levels_f", "last"], "k_max", axis=0)

    # RoIs [B, N, 4] -> [M, 4] with their image index [M].
    node("Shape", ["rois"], "rois_shape")
    node("Gather", ["rois_shape", "zero"], "num_images", axis=0)
    node("Slice", ["rois_shape", "i0", "i2"], "bn")
    node("Reshape", ["rois", "shape_m4"], "flat")
    node("Range", ["zero", "num_images", "one"], "image_range")
    node("Unsqueeze", ["image_range", "axis_from1"], "image_col")
    node("Expand", ["image_col", "bn"], "image_grid")
    node("Reshape", ["image_grid", "last_1d"], "batch_index")
    n.insert(0, _const("last_1d", [-1]))

    # Level of each RoI, as torchvision's LevelMapper.
    node("Slice", ["flat", "i0", "i1", "axis_from1"], "x1")
    node("Slice", ["flat", "i1", "i2", "axis_from1"], "y1")
    node("Slice", ["flat", "i2", "i3", "axis_from1"], "x2")
    node("Slice", ["flat", "i3", "i4", "axis_from1"], "y2")
    node("Sub", ["x2", "x1"], "w")
    node("Sub", ["y2", "y1"], "h")
    node("Mul", ["w", "h"], "area")
    node("Sqrt", ["area"], "s")
    node("Div", ["s", "canon_scale"], "s_rel")
    node("Log", ["s_rel"], "ln_s_rel")
    node("Div", ["ln_s_rel", "ln2"], "log2_s_rel")
    node("Add", ["canon_level", "log2_s_rel"], "lvl_raw")
    node("Add", ["lvl_raw", "eps"], "lvl_eps")
    node("Floor", ["lvl_eps"], "lvl_floor")
    node("Clip", ["lvl_floor", "k_min", "k_max"], "lvl_clip")
    node("Sub", ["lvl_clip", "k_min"], "lvl_rel")
    node("Cast", ["lvl_rel"], "lvl_2d", to=TensorProto.INT64)
    node("Reshape", ["lvl_2d", "last_1d"], "lvl")  # [M]

    # Each RoI goes to exactly one level (so that the levels' picks are a permutation): a level
    # the coarser levels do not claim -- even an undefined one, from a degenerate box -- is 0.
    n += [_const(f"l{i}", i) for i in range(num_levels)]
    for i in range(1, num_levels):
        node("Equal", ["lvl", f"l{i}"], f"is_{i}")
    claimed = "is_1" if num_levels > 1 else ""
    for i in range(2, num_levels):
        claimed = node("Or", [claimed, f"is_{i}"], f"claimed_{i}")
    if claimed:
        node("Not", [claimed], "is_0")
    else:
        node("Equal", ["lvl", "lvl"], "is_0")

    pooled, picked = [], []
    for i, feat in enumerate(feats):
        node("Gather", ["scales", f"l{i}"], f"scale_{i}", axis=0)
        node("NonZero", [f"is_{i}"], f"nonzero_{i}")
        picked.append(node("Reshape", [f"nonzero_{i}", "last_1d"], f"idx_{i}"))  # [M_l]
        node("Gather", ["flat", f"idx_{i}"], f"level_rois_{i}", axis=0)
        node("Mul", [f"level_rois_{i}", f"scale_{i}"], f"rois_{i}")
        node("Gather", ["batch_index", f"idx_{i}"], f"batch_index_{i}", axis=0)
        ra = helper.make_node(
            "RoiAlign",
            [feat, f"rois_{i}", f"batch_index_{i}"],
            [f"pooled_{i}"],
            mode="avg",
            spatial_scale=1.0,
            coordinate_transformation_mode="output_half_pixel",
        )
        ra.attribute.extend(
            [
                _ref("output_height", AttributeProto.INT, "output_size"),
                _ref("output_width", AttributeProto.INT, "output_size"),
                _ref("sampling_ratio", AttributeProto.INT, "sampling_ratio"),
            ]
        )
        n.append(ra)
        pooled.append(f"pooled_{i}")

    # Back to the RoIs' order: row m of the output is row inv[m] of the level-sorted pooling, where
    # inv inverts the permutation `order`. ScatterElements writes every position of its data
    # (a permutation covers them all), so `order` itself serves as the data to overwrite.
    node("Concat", pooled, "pooled_sorted", axis=0)  # [M, C, P, P]
    node("Concat", picked, "order", axis=0)  # [M]
    node("Shape", ["order"], "m_1d")
    node("Squeeze", ["m_1d", "axes0"], "m")
    node("Range", ["zero", "m", "one"], "positions")
    node("ScatterElements", ["order", "order", "positions"], "inv", axis=0)
    node("Gather", ["pooled_sorted", "inv"], "merged", axis=0)

    node("Shape", ["merged"], "pooled_shape")
    node("Slice", ["pooled_shape", "i1", "axis_big"], "cpp")
    node("Concat", ["bn", "cpp"], "out_shape", axis=0)
    # allowzero: N may be 0 (no RoIs), which must not read as "copy this dimension".
    node("Reshape", ["merged", "out_shape"], "pooled", allowzero=1)

    # Constants first so that every node's inputs are defined before it (topological order).
    consts = [x for x in n if x.op_type == "Constant"]
    rest = [x for x in n if x.op_type != "Constant"]
    return helper.make_function(
        UNIT_DOMAIN,
        UNIT_OP_TYPE,
        inputs=[*feats, "rois"],
        outputs=["pooled"],
        nodes=consts + rest,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTE_NAMES),
    )
