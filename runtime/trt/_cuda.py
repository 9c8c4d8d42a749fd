"""The only module that calls pycuda (which has no type stubs); typed at its boundary.

One CUDA context per process, the device's primary context, made current only around the work
that needs it (:func:`activated`): pycuda keeps a context stack per thread, so a context pushed
once on the first thread is not current on a serving thread pool's others (``mem_alloc`` fails
there), and pycuda aborts the process at exit when a stack still holds a context. So every
entry point pushes the context on the calling thread and pops it when done; nothing stays
pushed. Streams, device buffers, page-locked host buffers and async copies; no CUDA-graph
capture (no released pycuda wraps stream capture).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from maskrt.errors import MaskrtError

_driver: Any = None
_context: Any = None
_init_lock = threading.Lock()


def driver() -> Any:
    """pycuda.driver, initialised once, with the primary context of device 0 retained (not
    pushed: see :func:`activated`)."""
    global _driver, _context
    with _init_lock:
        if _driver is None:
            try:
                cuda = importlib.import_module("pycuda.driver")
            except ImportError:
                raise MaskrtError(
                    "pycuda is not installed; install maskrt[trt] on a machine with TensorRT"
                ) from None
            try:
                cuda.init()
                if cuda.Device.count() < 1:
                    raise MaskrtError("no CUDA GPU is visible")
                _context = cuda.Device(0).retain_primary_context()
            except cuda.Error as e:  # pycuda's base error: cuInit fails without a driver/GPU
                raise MaskrtError(f"CUDA is not usable here ({e}); TensorRT needs a GPU") from None
            _driver = cuda
    return _driver


@contextlib.contextmanager
def activated() -> Iterator[Any]:
    """The primary context current on the calling thread for the ``with`` block (pushed, then
    popped; a no-op when it is current already, so blocks nest)."""
    cuda = driver()
    current = cuda.Context.get_current()  # None when this thread's stack is empty
    if current is not None and current == _context:
        yield cuda
        return
    _context.push()
    try:
        yield cuda
    finally:
        cuda.Context.pop()


def device_facts() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the GPU in use."""
    with activated() as cuda:
        dev = cuda.Context.get_device()
        major, minor = dev.compute_capability()
        return str(dev.name()), (int(major), int(minor))


class Stream:
    """A CUDA stream; ``handle`` is what TensorRT's ``execute_async_v3`` takes. Create and use
    it (like the buffers below) inside :func:`activated`."""

    def __init__(self) -> None:
        self._stream: Any = driver().Stream()

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()


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
