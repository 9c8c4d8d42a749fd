"""Engine sidecar schema and the compatibility checks, without TensorRT (pure functions)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.fileio import sha256_file
from maskrt.runtime.profiles import apply_overrides, default_profile, parse_shape_args
from maskrt.runtime.sidecar import (
    MachineFacts,
    Sidecar,
    check_compatible,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from maskrt.specs import demo_spec

HERE = MachineFacts("10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0), "ab" * 32)


def _sidecar(uses_plugins: bool = True, machine: MachineFacts = HERE) -> Sidecar:
    spec = demo_spec()
    dims = {contract.INPUT_IMAGES: ("B", 3, "H", "W"), contract.INPUT_IMAGE_SIZES: ("B", 2)}
    return Sidecar(
        machine=machine,
        onnx_sha256="0" * 64,
        engine_sha256="1" * 64,
        precision="fp16",
        profiles=(default_profile(dims, spec, max_batch=2),),
        spec=spec,
        uses_plugins=uses_plugins,
        io=contract.io_specs(spec.box_detections_per_img, True, False),
    )


def test_roundtrip_through_json(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    path = write_sidecar(engine, _sidecar())
    assert path == sidecar_path(engine) and path.name == "m.engine.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["compute_capability"] == [9, 0]
    assert data["io"][0]["name"] == contract.INPUT_IMAGES
    assert read_sidecar(engine) == _sidecar()


def test_compatible_machine_passes() -> None:
    check_compatible(_sidecar(), HERE, "1" * 64)
    # Same release, other build number: fine.
    check_compatible(_sidecar(), dataclasses.replace(HERE, tensorrt_version="10.13.0.99"))
    # No plugins in the engine: a missing plugin library does not matter.
    check_compatible(_sidecar(uses_plugins=False), dataclasses.replace(HERE, plugin_sha256=None))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tensorrt_version": "10.14.1.48"}, "built with TensorRT 10.13.0.35"),
        ({"tensorrt_version": "11.1.0.1"}, "this machine has 11.1.0.1"),
        ({"compute_capability": (8, 9)}, "compute capability 9.0"),
        ({"plugin_sha256": "cd" * 32}, "different maskrt plugin library"),
        ({"plugin_sha256": None}, "plugin library is not built"),
    ],
)
def test_mismatches_are_refused(change: dict, message: str) -> None:
    with pytest.raises(MaskrtError, match=message) as refused:
        check_compatible(_sidecar(), dataclasses.replace(HERE, **change))
    if "plugin_sha256" not in change:  # another TensorRT or GPU: say how to get a good engine
        assert "rebuild it here with `maskrt build`" in str(refused.value)


def test_engine_hash_mismatch_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="does not match its sidecar"):
        check_compatible(_sidecar(), HERE, "2" * 64)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"engine")
    assert sha256_file(engine) == hashlib.sha256(b"engine").hexdigest()
    with pytest.raises(MaskrtError, match="no sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(MaskrtError, match="cannot read"):
        read_sidecar(engine)
    data = _sidecar().to_dict()
    data["schema_version"] = 99
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(MaskrtError, match="schema 99"):
        read_sidecar(engine)
    data = _sidecar().to_dict()
    del data["precision"]
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(MaskrtError, match="malformed"):
        read_sidecar(engine)


def test_default_profile_and_overrides() -> None:
    spec = demo_spec()  # min_size 128, max_size 224
    dims = {contract.INPUT_IMAGES: ("B", 3, "H", "W"), contract.INPUT_IMAGE_SIZES: ("B", 2)}
    p = default_profile(dims, spec, max_batch=4)
    assert p[contract.INPUT_IMAGES] == ((1, 3, 32, 32), (1, 3, 128, 224), (4, 3, 224, 224))
    assert p[contract.INPUT_IMAGE_SIZES] == ((1, 2), (1, 2), (4, 2))
    fixed = default_profile({**dims, contract.INPUT_IMAGES: (1, 3, 224, 224)}, spec)
    assert fixed[contract.INPUT_IMAGES] == ((1, 3, 224, 224),) * 3
    # torchvision's fixed_size is (width, height); every image resizes to it, padded to 32.
    resized = default_profile(dims, spec.replace(fixed_size=(200, 150)), max_batch=2)
    assert resized[contract.INPUT_IMAGES] == ((1, 3, 160, 224), (1, 3, 160, 224), (2, 3, 160, 224))
    shapes = parse_shape_args(["images:2x3x160x160"])
    q = apply_overrides(p, {}, shapes, {})
    assert q[contract.INPUT_IMAGES][1] == (2, 3, 160, 160)
    assert q[contract.INPUT_IMAGE_SIZES][1] == (2, 2)  # follows the images batch
    with pytest.raises(MaskrtError, match="min <= opt <= max"):
        apply_overrides(p, {}, parse_shape_args(["images:8x3x160x160"]), {})
    with pytest.raises(MaskrtError, match="bad shape"):
        parse_shape_args(["images=1x3"])
    with pytest.raises(MaskrtError, match="no graph input"):
        apply_overrides(p, parse_shape_args(["foo:1"]), {}, {})
