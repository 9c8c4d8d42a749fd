"""The RoIAlign plugins' contract: names, version, namespace and fields, read from one file;
with the identity of the RoIAlign unit node that ``maskrt export`` writes and graph surgery
replaces, and torchvision's FPN level rule (LevelMapper) in numpy.

The single source is ``multilevel_roialign/contract.json``; CMake generates the C++ header
``roialign_contract.h`` from the same file and the CPU library reports it back
(``maskrt_plugin_name()`` ...), which the tests compare with this module.

Graph surgery and export import from here::

    from maskrt.plugins.contract import PLUGIN_NAME, MultiLevelRoIAlignFields

    fields = MultiLevelRoIAlignFields(output_size=7, sampling_ratio=2, aligned=0,
                                      spatial_scales=(0.25, 0.125, 0.0625, 0.03125))
    node = onnx.helper.make_node(PLUGIN_NAME, inputs, outputs, **fields.to_onnx_attributes())

TensorRT's ONNX parser hands a node's attributes to the plugin creator as PluginFields (int ->
int32, float -> float32, floats -> float32 array) and uses ``plugin_version`` and
``plugin_namespace`` to find the creator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError

CONTRACT_FILE = Path(__file__).with_name("multilevel_roialign") / "contract.json"

_CONTRACT: dict[str, Any] = json.loads(CONTRACT_FILE.read_text())

PLUGIN_NAMESPACE: str = _CONTRACT["namespace"]
# The ONNX domain of plugin nodes: onnxruntime-extensions' custom-op domain, where ONNX Runtime
# finds the CPU twin. TensorRT's parser finds the creator by op type, version and namespace.
PLUGIN_DOMAIN: str = _CONTRACT["plugin_domain"]

# The unit node `maskrt export` writes (defined by a model-local ONNX function) and surgery
# replaces: L feature maps [B, C, H_l, W_l] then rois [B, N, 4] -> [B, N, C, P, P]; its
# attributes are the multi-level plugin's fields.
UNIT_DOMAIN: str = _CONTRACT["export_unit"]["domain"]
UNIT_OP_TYPE: str = _CONTRACT["export_unit"]["op_type"]
UNIT_DOMAIN_VERSION: int = _CONTRACT["export_unit"]["domain_version"]

# torchvision's LevelMapper guards log2 against rounding at exact powers of two with this.
LEVEL_EPS = 1e-6

# multi-level mode: inputs P_1..P_L [B, C, H_l, W_l], rois [B, N, 4] -> [B, N, C, P, P]
PLUGIN_NAME: str = _CONTRACT["multilevel"]["name"]
PLUGIN_VERSION: str = _CONTRACT["multilevel"]["version"]
FIELD_TYPES: dict[str, str] = {f["name"]: f["type"] for f in _CONTRACT["multilevel"]["fields"]}
MAX_LEVELS: int = _CONTRACT["multilevel"]["max_levels"]  # feature levels one node takes, at most

# single-level mode (ONNX RoiAlign, avg): X [B, C, H, W], rois [R, 4], batch_indices [R]
SINGLE_PLUGIN_NAME: str = _CONTRACT["single"]["name"]
SINGLE_PLUGIN_VERSION: str = _CONTRACT["single"]["version"]
SINGLE_FIELD_TYPES: dict[str, str] = {f["name"]: f["type"] for f in _CONTRACT["single"]["fields"]}

# ONNX attributes that carry the plugin identity rather than a field
ATTR_PLUGIN_VERSION = "plugin_version"
ATTR_PLUGIN_NAMESPACE = "plugin_namespace"

_ML_DEFAULTS = {f["name"]: f.get("default") for f in _CONTRACT["multilevel"]["fields"]}
_SINGLE_DEFAULTS = {f["name"]: f.get("default") for f in _CONTRACT["single"]["fields"]}
DEFAULT_SPATIAL_SCALES: tuple[float, ...] = tuple(_ML_DEFAULTS["spatial_scales"])


def _attr_value(attrs: Mapping[str, Any], name: str, default: Any) -> Any:
    value = attrs.get(name, default)
    if value is None:
        raise MaskrtError(f"{PLUGIN_NAME} node lacks attribute {name!r}")
    return value


@dataclass(frozen=True)
class MultiLevelRoIAlignFields:
    """Fields of the multi-level RoIAlign plugin (torchvision ``MultiScaleRoIAlign``).

    Args:
        output_size: P, the output is ``[B, N, C, P, P]``.
        sampling_ratio: samples per bin side; ``<= 0`` means adaptive, ``ceil(roi_size / P)``.
        aligned: 1 shifts box coordinates by -0.5 pixel (``roi_align(aligned=True)``); torchvision's
            ``MultiScaleRoIAlign`` uses 0.
        spatial_scales: feature-map scale of each level, finest first (``2 ** -k``).
        canonical_scale, canonical_level: the FPN level mapping, a box of
            ``canonical_scale ** 2`` pixels is pooled from level ``canonical_level``.
    """

    output_size: int
    sampling_ratio: int
    aligned: int
    spatial_scales: tuple[float, ...]
    canonical_scale: int = _ML_DEFAULTS["canonical_scale"]
    canonical_level: int = _ML_DEFAULTS["canonical_level"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_scales", tuple(float(s) for s in self.spatial_scales))
        if self.output_size < 1:
            raise MaskrtError(f"output_size must be >= 1, got {self.output_size}")
        if self.aligned not in (0, 1):
            raise MaskrtError(f"aligned must be 0 or 1, got {self.aligned}")
        scales = self.spatial_scales
        if not 1 <= len(scales) <= MAX_LEVELS or any(s <= 0 for s in scales):
            raise MaskrtError(f"spatial_scales needs 1..{MAX_LEVELS} positive scales, got {scales}")

    def field_attributes(self) -> dict[str, Any]:
        """The fields as ONNX attributes (the export unit node's attributes)."""
        attrs: dict[str, Any] = {
            "output_size": int(self.output_size),
            "sampling_ratio": int(self.sampling_ratio),
            "aligned": int(self.aligned),
            "spatial_scales": [float(s) for s in self.spatial_scales],
            "canonical_scale": int(self.canonical_scale),
            "canonical_level": int(self.canonical_level),
        }
        assert list(attrs) == list(FIELD_TYPES), "fields out of step with contract.json"
        return attrs

    def to_onnx_attributes(self) -> dict[str, Any]:
        """The plugin node's ONNX attributes: the fields plus plugin_version/plugin_namespace."""
        attrs = self.field_attributes()
        attrs[ATTR_PLUGIN_VERSION] = PLUGIN_VERSION
        attrs[ATTR_PLUGIN_NAMESPACE] = PLUGIN_NAMESPACE
        return attrs

    @property
    def level_range(self) -> tuple[int, int]:
        """(k_min, k_max): the FPN levels of the finest and coarsest feature maps."""
        return -round(math.log2(self.spatial_scales[0])), -round(math.log2(self.spatial_scales[-1]))

    def levels(self, boxes: np.ndarray) -> np.ndarray:
        """Level index (0 = finest) of each box ``[M, 4]`` (x1, y1, x2, y2): torchvision's
        LevelMapper in float32, the plugin's level rule."""
        k_min, k_max = self.level_range
        boxes = np.asarray(boxes, np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        lg = np.log(np.sqrt(area) / np.float32(self.canonical_scale)) / np.float32(math.log(2.0))
        lvl = np.floor(np.float32(self.canonical_level) + lg + np.float32(LEVEL_EPS))
        return np.clip(lvl, k_min, k_max).astype(np.int64) - k_min

    @classmethod
    def from_onnx_attributes(cls, attrs: Mapping[str, Any]) -> MultiLevelRoIAlignFields:
        """Inverse of :meth:`to_onnx_attributes` (also takes ``onnx.helper.get_node_attr_value``
        results); absent optional fields take the contract defaults."""
        version = attrs.get(ATTR_PLUGIN_VERSION, PLUGIN_VERSION)
        if isinstance(version, bytes):
            version = version.decode()
        if version != PLUGIN_VERSION:
            raise MaskrtError(f"{PLUGIN_NAME} version {version} is not {PLUGIN_VERSION}")
        return cls(
            output_size=int(_attr_value(attrs, "output_size", _ML_DEFAULTS["output_size"])),
            sampling_ratio=int(
                _attr_value(attrs, "sampling_ratio", _ML_DEFAULTS["sampling_ratio"])
            ),
            aligned=int(_attr_value(attrs, "aligned", _ML_DEFAULTS["aligned"])),
            spatial_scales=tuple(
                float(s) for s in _attr_value(attrs, "spatial_scales", DEFAULT_SPATIAL_SCALES)
            ),
            canonical_scale=int(
                _attr_value(attrs, "canonical_scale", _ML_DEFAULTS["canonical_scale"])
            ),
            canonical_level=int(
                _attr_value(attrs, "canonical_level", _ML_DEFAULTS["canonical_level"])
            ),
        )


@dataclass(frozen=True)
class SingleRoIAlignFields:
    """Fields of the single-level plugin: ONNX ``RoiAlign`` (opset 16+, ``mode="avg"``).

    ``aligned`` is 1 for ``coordinate_transformation_mode="half_pixel"`` (the ONNX default) and 0
    for ``"output_half_pixel"``.
    """

    output_height: int = _SINGLE_DEFAULTS["output_height"]
    output_width: int = _SINGLE_DEFAULTS["output_width"]
    sampling_ratio: int = _SINGLE_DEFAULTS["sampling_ratio"]
    spatial_scale: float = _SINGLE_DEFAULTS["spatial_scale"]
    aligned: int = _SINGLE_DEFAULTS["aligned"]

    def to_onnx_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "output_height": int(self.output_height),
            "output_width": int(self.output_width),
            "sampling_ratio": int(self.sampling_ratio),
            "spatial_scale": float(self.spatial_scale),
            "aligned": int(self.aligned),
        }
        assert list(attrs) == list(SINGLE_FIELD_TYPES), "fields out of step with contract.json"
        attrs[ATTR_PLUGIN_VERSION] = SINGLE_PLUGIN_VERSION
        attrs[ATTR_PLUGIN_NAMESPACE] = PLUGIN_NAMESPACE
        return attrs

    @classmethod
    def from_onnx_attributes(cls, attrs: Mapping[str, Any]) -> SingleRoIAlignFields:
        return cls(**{k: type(v)(attrs[k]) for k, v in _SINGLE_DEFAULTS.items() if k in attrs})

    @classmethod
    def from_onnx_roialign(cls, attrs: Mapping[str, Any]) -> SingleRoIAlignFields:
        """Fields equivalent to a standard ONNX ``RoiAlign`` node's attributes (opset 16+)."""
        mode = _text(attrs.get("mode", "avg"))
        if mode != "avg":
            raise MaskrtError(f"RoiAlign mode={mode!r} is not supported (only 'avg')")
        ctm = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        if ctm not in ("half_pixel", "output_half_pixel"):
            raise MaskrtError(f"RoiAlign coordinate_transformation_mode={ctm!r} is not supported")
        return cls(
            output_height=int(attrs.get("output_height", 1)),
            output_width=int(attrs.get("output_width", 1)),
            sampling_ratio=int(attrs.get("sampling_ratio", 0)),
            spatial_scale=float(attrs.get("spatial_scale", 1.0)),
            aligned=1 if ctm == "half_pixel" else 0,
        )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def field_names() -> Sequence[str]:
    """Multi-level field names, in contract order."""
    return tuple(FIELD_TYPES)
