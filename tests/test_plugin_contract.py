"""The plugin contract: one source (contract.json) seen identically by C++ and Python."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from maskrt.errors import MaskrtError
from maskrt.plugins import _library, contract
from maskrt.plugins.contract import MultiLevelRoIAlignFields, SingleRoIAlignFields


def test_cpu_library_reports_the_same_contract() -> None:
    lib = _library.load(_library.CPU)
    assert lib.maskrt_plugin_namespace().decode() == contract.PLUGIN_NAMESPACE
    assert lib.maskrt_plugin_name().decode() == contract.PLUGIN_NAME
    assert lib.maskrt_plugin_version().decode() == contract.PLUGIN_VERSION
    assert lib.maskrt_plugin_field_names().decode().split(",") == list(contract.FIELD_TYPES)
    assert lib.maskrt_single_plugin_name().decode() == contract.SINGLE_PLUGIN_NAME
    assert lib.maskrt_single_plugin_version().decode() == contract.SINGLE_PLUGIN_VERSION
    assert lib.maskrt_single_plugin_field_names().decode().split(",") == list(
        contract.SINGLE_FIELD_TYPES
    )


def test_fields_round_trip_through_an_onnx_node() -> None:
    fields = MultiLevelRoIAlignFields(14, 0, 1, (0.25, 0.125, 0.0625), canonical_scale=200)
    attrs = fields.to_onnx_attributes()
    assert attrs["plugin_version"] == contract.PLUGIN_VERSION
    assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE
    node = helper.make_node(contract.PLUGIN_NAME, ["p2", "p3", "p4", "rois"], ["y"], **attrs)
    types = {a.name: a.type for a in node.attribute}
    # the attribute kinds TensorRT's ONNX parser turns into the creator's PluginField types
    kind = {
        "int32": onnx.AttributeProto.INT,
        "float32": onnx.AttributeProto.FLOAT,
        "float32[]": onnx.AttributeProto.FLOATS,
    }
    for name, t in contract.FIELD_TYPES.items():
        assert types[name] == kind[t], name
    read = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert MultiLevelRoIAlignFields.from_onnx_attributes(read) == fields


def test_single_fields_from_onnx_roialign() -> None:
    f = SingleRoIAlignFields.from_onnx_roialign(
        {
            "output_height": 3,
            "output_width": 5,
            "coordinate_transformation_mode": b"output_half_pixel",
        }
    )
    assert (f.output_height, f.output_width, f.aligned, f.sampling_ratio) == (3, 5, 0, 0)
    assert SingleRoIAlignFields.from_onnx_attributes(f.to_onnx_attributes()) == f
    with pytest.raises(MaskrtError, match="max"):
        SingleRoIAlignFields.from_onnx_roialign({"mode": "max"})


def test_bad_fields_and_versions_raise() -> None:
    with pytest.raises(MaskrtError):
        MultiLevelRoIAlignFields(0, 2, 0, (0.25,))
    with pytest.raises(MaskrtError):
        MultiLevelRoIAlignFields(7, 2, 0, ())
    attrs = MultiLevelRoIAlignFields(7, 2, 0, (0.25,)).to_onnx_attributes()
    attrs["plugin_version"] = "2"
    with pytest.raises(MaskrtError, match="version"):
        MultiLevelRoIAlignFields.from_onnx_attributes(attrs)


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_library, "search_dirs", lambda: [tmp_path])
    with pytest.raises(MaskrtError, match="reinstall maskrt"):
        _library.require(_library.CPU)


def test_plugin_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(_library.ENV_PLUGIN_DIR, str(tmp_path))
    assert _library.search_dirs()[0] == tmp_path


def test_built_libraries_are_found_next_to_native_module() -> None:
    """CMake installs the libraries beside the generated _native.py (in an editable install
    that is site-packages, not the source folder); the loader looks there."""
    from pathlib import Path

    from maskrt.plugins import _native, built_libraries

    assert built_libraries()["cpu"] == "yes"
    cpu = _library.find(_library.CPU)
    assert cpu is not None and cpu.parent == Path(_native.__file__).parent
    if built_libraries()["cuda"] == "yes":
        cuda = _library.find(_library.CUDA)
        assert cuda is not None and cuda.parent == cpu.parent


def test_numpy_level_mapper_matches_torchvision() -> None:
    """MultiLevelRoIAlignFields.levels (used by surgery's LevelMapper probe) against
    torchvision's LevelMapper, on boxes inside, on and just past every level boundary."""
    import torch
    from torchvision.ops.poolers import LevelMapper

    for canonical_scale, canonical_level in ((224, 4), (160, 3)):
        fields = MultiLevelRoIAlignFields(
            output_size=7, sampling_ratio=2, aligned=0,
            spatial_scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32),
            canonical_scale=canonical_scale, canonical_level=canonical_level,
        )  # fmt: skip
        sides = [canonical_scale * 2.0**j * f for j in range(-5, 5) for f in (0.999, 1, 1.001, 1.5)]
        side = np.asarray(sides + [1e-3], np.float32)
        boxes = np.stack([np.full_like(side, 3), np.full_like(side, 5), 3 + side, 5 + side], 1)
        k_min, k_max = fields.level_range
        mapper = LevelMapper(k_min, k_max, canonical_scale, canonical_level)
        expected = mapper([torch.from_numpy(boxes)]).numpy()
        np.testing.assert_array_equal(fields.levels(boxes), expected)
