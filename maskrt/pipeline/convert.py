"""`maskrt convert`: checkpoint -> deploy ONNX -> precision -> surgery -> TensorRT engine.

The one chain of stage calls; `maskrt validate` makes its artifacts with the same steps. Each
step is a stage's public library function; this module only names the files and orders them.
The build step runs only where TensorRT is installed; elsewhere the chain stops after surgery
and says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import MaskrtError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ArtifactPaths:
    """Where the chain writes, inside one output folder."""

    out: Path

    @property
    def fp32(self) -> Path:
        return self.out / "model.fp32.onnx"

    def graph(self, precision: str) -> Path:
        """The deploy graph of ``precision`` (fp32: the export itself)."""
        return self.out / f"model.{precision}.onnx"

    def surgered(self, precision: str) -> Path:
        return self.out / f"model.{precision}.trt.onnx"

    def engine(self, precision: str) -> Path:
        return self.out / f"model.{precision}.engine"

    @property
    def calibration_cache(self) -> Path:
        return self.out / "calibration.cache.json"


@dataclass(frozen=True)
class ConvertResult:
    graph: Path  # the deploy graph at the requested precision (ONNX Runtime runs it)
    surgered: Path  # the same with plugin nodes (TensorRT's input)
    engine: Path | None  # None where TensorRT is missing
    note: str  # what happened to the build step


def tensorrt_missing() -> str | None:
    """Why no engine can be built here, or None when TensorRT is usable."""
    try:
        from .runtime.trt.common import tensorrt

        tensorrt()
    except MaskrtError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"TensorRT unusable: {type(e).__name__}: {e}"
    return None


def export_step(checkpoint: str | os.PathLike[str], dst: Path, arch: str | None = None) -> None:
    from .checkpoint import load_checkpoint
    from .export import export_onnx

    spec, model = load_checkpoint(checkpoint, arch=arch)
    export_onnx(spec, model, dst, force=True)


def precision_step(
    fp32: Path,
    dst: Path,
    precision: str,
    calib_data: str | os.PathLike[str] | None,
    method: str,
    max_images: int,
    cache: Path | None,
    show_progress: bool,
) -> None:
    """Write the ``precision`` version of the FP32 deploy graph ``fp32`` to ``dst``."""
    from .calibration import calibrate_fp16, quantize_to_int8

    if precision == "fp16":
        calibrate_fp16(fp32, dst, force=True)
    elif precision == "int8":
        if calib_data is None:
            raise MaskrtError("INT8 needs calibration images: pass --calib-data DIR")
        quantize_to_int8(
            fp32, dst, calib_data, method=method, max_images=max_images, cache=cache,
            force=True, show_progress=show_progress,
        )  # fmt: skip
    elif precision != "fp32":
        raise MaskrtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def surgery_step(src: Path, dst: Path) -> None:
    from .plugins.surgery import surgery_file

    surgery_file(src, dst, force=True)


def build_step(surgered: Path, engine: Path, max_batch: int = 1) -> None:
    """Build ``surgered`` into ``engine`` with the default optimisation profile of its spec."""
    from .runtime.backends.onnxruntime_backend import read_graph_facts, spec_from_metadata
    from .runtime.profiles import default_profile, onnx_input_dims
    from .runtime.trt.build import build_engine

    meta, _ = read_graph_facts(surgered)
    spec = spec_from_metadata(meta, str(surgered))
    profile = default_profile(onnx_input_dims(surgered), spec, max_batch)
    build_engine(surgered, engine, profile, force=True)


def convert(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    precision: str = "fp32",
    calib_data: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    method: str = "entropy",
    max_images: int = 512,
    max_batch: int = 1,
    force: bool = False,
    show_progress: bool = False,
    log: Callable[[str], None] = print,
) -> ConvertResult:
    """Run the whole chain for ``checkpoint`` into the folder ``out``."""
    if precision not in PRECISIONS:
        raise MaskrtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not Path(checkpoint).is_file():
        raise MaskrtError(f"checkpoint {checkpoint} does not exist")
    if precision == "int8" and calib_data is None:
        raise MaskrtError("INT8 needs calibration images: pass --calib-data DIR")
    paths = ArtifactPaths(Path(out))
    targets = (paths.fp32, paths.graph(precision), paths.surgered(precision))
    existing = [p for p in (*targets, paths.engine(precision)) if p.exists()]
    if existing and not force:
        raise MaskrtError(f"{existing[0]} exists; pass --force to overwrite the outputs in {out}")
    paths.out.mkdir(parents=True, exist_ok=True)

    log(f"export -> {paths.fp32}")
    export_step(checkpoint, paths.fp32, arch=arch)
    graph = paths.graph(precision)
    if precision != "fp32":
        log(f"{precision} -> {graph}")
        precision_step(paths.fp32, graph, precision, calib_data, method, max_images,
                       paths.calibration_cache, show_progress)  # fmt: skip
    surgered = paths.surgered(precision)
    log(f"surgery -> {surgered}")
    surgery_step(graph, surgered)

    missing = tensorrt_missing()
    if missing:
        note = f"stopped after surgery: {missing}"
        log(note)
        return ConvertResult(graph, surgered, None, note)
    engine = paths.engine(precision)
    log(f"build -> {engine}")
    build_step(surgered, engine, max_batch=max_batch)
    return ConvertResult(graph, surgered, engine, "engine built")
