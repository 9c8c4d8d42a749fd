"""Build a TensorRT engine from a deploy ONNX graph, plus its sidecar.

Precision comes from the graph itself: the network is strongly typed (TensorRT 11 has no other
mode; on TensorRT 10 the STRONGLY_TYPED creation flag is set), so there are no FP16/INT8
builder flags and no calibrator.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_write_bytes, check_writable, sha256_file
from maskrt.onnxio import custom_op_types, load_onnx, metadata, spec_from_metadata
from maskrt.plugins.tensorrt_check import require_tensorrt_ready

from ..profiles import ShapeRange
from ..sidecar import Sidecar, sidecar_path, write_sidecar
from .common import load_plugins, logger, machine_facts, tensorrt, trt_major

if TYPE_CHECKING:
    import tensorrt as trt

GIB = 1 << 30


def network_flags() -> int:
    """Creation flags: strongly typed (explicit on TensorRT 10, implied from 11 on)."""
    major = trt_major()
    if major < 10:
        raise MaskrtError(f"TensorRT {tensorrt().__version__} is too old; maskrt needs 10 or newer")
    if major == 10:
        flag: trt.NetworkDefinitionCreationFlag = (
            tensorrt().NetworkDefinitionCreationFlag.STRONGLY_TYPED
        )
        return 1 << int(flag)
    return 0


def _parse(parser: trt.OnnxParser, onnx_path: Path) -> None:
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].strip().splitlines()[0] if errors else "unknown error"
        raise MaskrtError(f"TensorRT cannot parse {onnx_path}: {first}")


def _to_dims(shape: tuple[int, ...]) -> trt.Dims:
    dims: trt.Dims = tensorrt().Dims(list(shape))
    return dims


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    profile: Mapping[str, ShapeRange],
    num_profiles: int = 1,
    workspace_gib: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Sidecar:
    """Build ``onnx_path`` into ``engine_path`` (atomically) and write its sidecar.

    ``profile`` maps every network input to (min, opt, max) shapes; it is repeated
    ``num_profiles`` times so that as many execution contexts can run concurrently.
    ``timing_cache`` is read when it exists and written back after the build. A graph that
    TensorRT would refuse or run differently from ONNX Runtime
    (:func:`maskrt.plugins.tensorrt_check.tensorrt_findings`) is refused first, in one line.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise MaskrtError(f"{onnx_path} does not exist")
    engine_path = check_writable(engine_path, force)
    check_writable(sidecar_path(engine_path), force)
    graph = load_onnx(onnx_path, weights=False)
    meta, custom_ops = metadata(graph), custom_op_types(graph)
    spec = spec_from_metadata(meta, str(onnx_path))
    # TensorRT's limits, checked before TensorRT is needed (and where it is not installed)
    require_tensorrt_ready(graph, str(onnx_path))
    del graph
    uses_plugins = meta.get(contract.META_SURGERED) == "1" or bool(custom_ops)

    mod = tensorrt()
    plugin_lib = load_plugins()
    if uses_plugins and plugin_lib is None:
        raise MaskrtError(f"{onnx_path} uses maskrt plugins but the plugin library is not built")
    builder: trt.Builder = mod.Builder(logger())
    network = builder.create_network(network_flags())
    parser: trt.OnnxParser = mod.OnnxParser(network, logger())
    _parse(parser, onnx_path)

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(mod.MemoryPoolType.WORKSPACE, int(workspace_gib * GIB))
    cache_file = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = (
        cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = sorted(set(inputs) - set(profile))
    if missing:
        raise MaskrtError(f"no profile shapes for network inputs {', '.join(missing)}")
    for _ in range(max(num_profiles, 1)):
        opt_profile = builder.create_optimization_profile()
        for name in inputs:
            lo, mid, hi = profile[name]
            opt_profile.set_shape(name, _to_dims(lo), _to_dims(mid), _to_dims(hi))
        config.add_optimization_profile(opt_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MaskrtError(f"TensorRT failed to build {onnx_path} (see the TensorRT log above)")
    data = bytes(memoryview(serialized))
    atomic_write_bytes(engine_path, data)
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))

    sidecar = Sidecar(
        machine=machine_facts(),
        onnx_sha256=sha256_file(onnx_path),
        engine_sha256=hashlib.sha256(data).hexdigest(),
        precision=meta.get(contract.META_PRECISION, "fp32"),
        profiles=tuple(dict(profile) for _ in range(max(num_profiles, 1))),
        spec=spec,
        uses_plugins=uses_plugins,
        io=contract.io_specs(
            spec.box_detections_per_img,
            spec.has_masks,
            spec.has_keypoints,
            spec.num_keypoints,
            spec.mask_size,
            spec.keypoint_heatmap_size,
        ),  # fmt: skip
    )
    write_sidecar(engine_path, sidecar)
    return sidecar
