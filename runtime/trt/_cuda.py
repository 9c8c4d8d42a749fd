"""The only module that calls pycuda (which has no type stubs); typed at its boundary.

One CUDA context (the device's primary context) per process, streams, device buffers,
page-locked host buffers, async copies and CUDA graph capture.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError

_driver: Any = None
_context: Any = None


def driver() -> Any:
    """pycuda.driver with the primary context of device 0 current (made once)."""
    global _driver, _context
    if _driver is None:
        try:
            cuda = importlib.import_module("pycuda.driver")
        except ImportError:
            raise MaskrtError(
                "pycuda is not installed; install maskrt[trt] on a machine with TensorRT"
            ) from None
        cuda.init()
        if cuda.Device.count() < 1:
            raise MaskrtError("no CUDA GPU is visible")
        _context = cuda.Device(0).retain_primary_context()
        _context.push()
        _driver = cuda
    return _driver


def device_facts() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the GPU in use."""
    cuda = driver()
    dev = cuda.Context.get_device()
    major, minor = dev.compute_capability()
    return str(dev.name()), (int(major), int(minor))


class Stream:
    """A CUDA stream; ``handle`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._stream: Any = driver().Stream()

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def begin_capture(self) -> None:
        if not hasattr(self._stream, "begin_capture"):
            raise MaskrtError("CUDA graph capture needs pycuda >= 2022.1")
        self._stream.begin_capture()

    def end_capture(self) -> CudaGraph:
        return CudaGraph(self._stream.end_capture())


class CudaGraph:
    """An instantiated captured graph, replayed on a stream."""

    def __init__(self, graph: Any) -> None:
        self._graph = graph
        self._exec: Any = graph.get_exec_graph()

    def launch(self, stream: Stream) -> None:
        self._exec.launch(stream._stream)


class DeviceBuffer:
    """``nbytes`` of device memory; ``ptr`` is its address for ``set_tensor_address``."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self._alloc: Any = driver().mem_alloc(self.nbytes)

    @property
    def ptr(self) -> int:
        return int(self._alloc)

    def free(self) -> None:
        self._alloc.free()


def pagelocked_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """A page-locked host array (fast, truly asynchronous copies)."""
    array: np.ndarray[Any, Any] = driver().pagelocked_empty(shape, dtype)
    return array


def copy_to_device(dst: DeviceBuffer, src: np.ndarray[Any, Any], stream: Stream) -> None:
    driver().memcpy_htod_async(dst._alloc, src, stream._stream)


def copy_to_host(dst: np.ndarray[Any, Any], src: DeviceBuffer, stream: Stream) -> None:
    driver().memcpy_dtoh_async(dst, src._alloc, stream._stream)
