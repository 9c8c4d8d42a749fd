"""maskrt.plugins: the multi-level RoIAlign plugin (TensorRT, CUDA, CPU, ONNX Runtime).

* :mod:`maskrt.plugins.contract` -- plugin names, version, namespace and fields (written once).
* :func:`multilevel_roi_align` / :func:`roi_align_single` -- the CPU implementation (NumPy).
* :func:`multilevel_roi_align_cuda` / :func:`roi_align_single_cuda` -- the CUDA kernel (torch).
* :func:`ort_session` -- an ONNX Runtime session that runs a graph's plugin nodes on the CPU.
* :func:`plugin_library_path` -- the TensorRT plugin library, for ``IPluginRegistry.loadLibrary``.
"""

from __future__ import annotations

from pathlib import Path

from maskrt.plugins import _library
from maskrt.plugins.contract import (
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SINGLE_PLUGIN_NAME,
    SINGLE_PLUGIN_VERSION,
    MultiLevelRoIAlignFields,
    SingleRoIAlignFields,
)
from maskrt.plugins.ort import ort_session, ort_session_options
from maskrt.plugins.roialign import (
    multilevel_roi_align,
    multilevel_roi_align_cuda,
    roi_align_single,
    roi_align_single_cuda,
)


def plugin_library_path() -> Path | None:
    """Path of the TensorRT plugin library (``libmaskrt_roialign_trt.so``), or None if this
    build has none (no TensorRT headers or no CUDA compiler at build time)."""
    return _library.find(_library.TENSORRT)


# File name of the self-registering library, for those who write where it goes (Triton).
PLUGIN_AUTOREG_LIBRARY = _library._file_name(_library.TENSORRT_AUTOREG)


def plugin_autoreg_library_path() -> Path | None:
    """Path of the self-registering TensorRT plugin library
    (``libmaskrt_roialign_trt_autoreg.so``: linked to libnvinfer, registers its creators when
    opened; for loaders that only dlopen, e.g. Triton's ``plugins=``, ``polygraphy --plugins``),
    or None where the build found no libnvinfer. See plugins/multilevel_roialign/README.md."""
    return _library.find(_library.TENSORRT_AUTOREG)


def built_libraries() -> dict[str, str]:
    """What this build produced: ``{"cpu": ..., "cuda": ..., "tensorrt": ...}``."""
    return _library.built()


__all__ = [
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "SINGLE_PLUGIN_NAME",
    "SINGLE_PLUGIN_VERSION",
    "MultiLevelRoIAlignFields",
    "SingleRoIAlignFields",
    "built_libraries",
    "multilevel_roi_align",
    "multilevel_roi_align_cuda",
    "ort_session",
    "ort_session_options",
    "PLUGIN_AUTOREG_LIBRARY",
    "plugin_autoreg_library_path",
    "plugin_library_path",
    "roi_align_single",
    "roi_align_single_cuda",
]
