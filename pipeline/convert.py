"""`maskrt convert`: checkpoint -> deploy ONNX -> precision -> surgery -> TensorRT engine.

The one chain of stage calls; `maskrt validate` makes its artifacts with the same steps. Each
step is a stage's public library function; this module only names the files and orders them.
The build step runs only where TensorRT is installed; elsewhere the chain stops after surgery
and says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt.contract import PRECISIONS
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec


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
        from maskrt.runtime.trt.common import tensorrt

        tensorrt()
    except MaskrtError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"TensorRT unusable: {type(e).__name__}: {e}"
    return None


def export_step(spec: ModelSpec, model: Any, dst: Path, compact_heads: bool = False) -> None:
    """Export the torchvision ``model`` (described by ``spec``) to the FP32 deploy graph ``dst``."""
    from maskrt.export import export_onnx

    export_onnx(model, dst, spec=spec, compact_heads=compact_heads, force=True)


def precision_step(
    fp32: Path,
    dst: Path,
    precision: str,
    calib_data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    method: str,
    calib_images: int,
    cache: Path | None,
    show_progress: bool,
    fp16_groups: str | None = None,
) -> None:
    """Write the ``precision`` version of the FP32 deploy graph ``fp32`` to ``dst``
    (``fp16_groups``: INT8 only, the groups kept in FP16)."""
    from maskrt.calibration import calibrate_fp16, quantize_to_int8

    if precision == "fp16":
        calibrate_fp16(fp32, dst, force=True)
    elif precision == "int8":
        if not calib_data:
            raise MaskrtError("INT8 needs calibration images: pass --calib-data DIR")
        quantize_to_int8(
            fp32, dst, calib_data, method=method, max_images=calib_images, cache=cache,
            force=True, show_progress=show_progress, fp16_groups=fp16_groups or (),
        )  # fmt: skip
    elif precision != "fp32":
        raise MaskrtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def surgery_step(src: Path, dst: Path) -> list[str]:
    """Surgery of ``src`` into ``dst``; returns what TensorRT would refuse or change in it."""
    from maskrt.plugins.surgery import surgery_file

    return surgery_file(src, dst, force=True).tensorrt


def build_step(surgered: Path, engine: Path, max_batch: int = 1) -> None:
    """Build ``surgered`` into ``engine`` with the default optimisation profile of its spec."""
    from maskrt.onnxio import read_spec
    from maskrt.runtime.profiles import default_profile, onnx_input_dims
    from maskrt.runtime.trt.build import build_engine

    spec = read_spec(surgered)
    profile = default_profile(onnx_input_dims(surgered), spec, max_batch)
    build_engine(surgered, engine, profile, force=True)


def convert(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    precision: str = "fp32",
    calib_data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    arch: str | None = None,
    method: str = "entropy",
    calib_images: int = 512,
    max_batch: int = 1,
    force: bool = False,
    show_progress: bool = False,
    log: Callable[[str], None] = print,
    factory: str | None = None,
    factory_args: dict[str, Any] | None = None,
) -> ConvertResult:
    """Run the whole chain for ``checkpoint`` into the folder ``out`` (``arch``, ``factory``
    and ``factory_args`` as in :func:`maskrt.checkpoint.load_checkpoint`)."""
    if precision not in PRECISIONS:
        raise MaskrtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not Path(checkpoint).is_file():
        raise MaskrtError(f"checkpoint {checkpoint} does not exist")
    if precision == "int8" and not calib_data:
        raise MaskrtError("INT8 needs calibration images: pass --calib-data DIR")
    paths = ArtifactPaths(Path(out))
    targets = (paths.fp32, paths.graph(precision), paths.surgered(precision))
    existing = [p for p in (*targets, paths.engine(precision)) if p.exists()]
    if existing and not force:
        raise MaskrtError(f"{existing[0]} exists; pass --force to overwrite the outputs in {out}")
    paths.out.mkdir(parents=True, exist_ok=True)

    log(f"export -> {paths.fp32}")
    from maskrt.checkpoint import load_checkpoint

    spec, model = load_checkpoint(checkpoint, arch=arch, factory=factory, factory_args=factory_args)
    export_step(spec, model, paths.fp32)
    del model
    graph = paths.graph(precision)
    if precision != "fp32":
        log(f"{precision} -> {graph}")
        precision_step(paths.fp32, graph, precision, calib_data, method, calib_images,
                       paths.calibration_cache, show_progress)  # fmt: skip
    surgered = paths.surgered(precision)
    log(f"surgery -> {surgered}")
    for finding in surgery_step(graph, surgered):
        log(f"warning: TensorRT: {finding}")

    missing = tensorrt_missing()
    if missing:
        note = f"stopped after surgery: {missing}"
        log(note)
        return ConvertResult(graph, surgered, None, note)
    engine = paths.engine(precision)
    log(f"build -> {engine}")
    build_step(surgered, engine, max_batch=max_batch)
    return ConvertResult(graph, surgered, engine, "engine built")
