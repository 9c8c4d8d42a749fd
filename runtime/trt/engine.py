"""Run a TensorRT engine: the deploy contract's inputs in, its outputs out.

Tensors are bound by name (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``). Each execution context owns a stream, device buffers and page-locked
host buffers, reused across calls (grown when a larger shape arrives). Several contexts serve
concurrent callers, from any thread: the CUDA context is made current on the calling thread for
each call (``_cuda.activated``). Before TensorRT sees the engine, its sidecar is checked against
this machine.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.fileio import sha256_file

from ..sidecar import Sidecar, check_compatible, read_sidecar
from . import _cuda
from .common import load_plugins, logger, machine_facts, tensorrt

if TYPE_CHECKING:
    import tensorrt as trt


def numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    """numpy dtype of a TensorRT tensor type (the contract uses float32, int32)."""
    mod = tensorrt()
    table = {
        mod.DataType.FLOAT: np.float32,
        mod.DataType.HALF: np.float16,
        mod.DataType.INT32: np.int32,
        mod.DataType.INT64: np.int64,
        mod.DataType.INT8: np.int8,
        mod.DataType.UINT8: np.uint8,
        mod.DataType.BOOL: np.bool_,
    }
    if dtype not in table:
        raise MaskrtError(f"engine I/O type {dtype} is not supported")
    return np.dtype(table[dtype])


def _shape(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class _Binding:
    """Reusable device + page-locked host memory of one I/O tensor."""

    dtype: np.dtype[Any]
    device: _cuda.DeviceBuffer | None = None
    host: np.ndarray[Any, Any] | None = None

    def ensure(self, shape: tuple[int, ...]) -> tuple[_cuda.DeviceBuffer, np.ndarray[Any, Any]]:
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        if self.device is None or self.device.nbytes < nbytes:
            if self.device is not None:
                self.device.free()
            self.device = _cuda.DeviceBuffer(nbytes)
            self.host = _cuda.pagelocked_empty((max(nbytes // self.dtype.itemsize, 1),), self.dtype)
        assert self.host is not None
        count = int(np.prod(shape))
        return self.device, self.host[:count].reshape(shape)


@dataclass
class _Slot:
    """One execution context with everything it needs to run independently."""

    context: trt.IExecutionContext
    stream: _cuda.Stream
    bindings: dict[str, _Binding]


class TrtRunner:
    """A GraphRunner (see :mod:`maskrt.runtime.predictor`) over a TensorRT engine."""

    def __init__(self, engine_path: str | os.PathLike[str], contexts: int = 1) -> None:
        self.path = Path(engine_path)
        self.sidecar: Sidecar = read_sidecar(self.path)
        # Refuse a mismatch before TensorRT reads the engine (it may crash on one).
        check_compatible(self.sidecar, machine_facts(), sha256_file(self.path))
        self.spec = self.sidecar.spec
        mod = tensorrt()
        load_plugins()
        self._runtime: trt.Runtime = mod.Runtime(logger())
        with _cuda.activated():  # TensorRT allocates in the current context
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise MaskrtError(f"TensorRT could not deserialize {self.path} (see its log above)")
        self.engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == mod.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        expected_in = {contract.INPUT_IMAGES, contract.INPUT_IMAGE_SIZES}
        expected_out = contract.output_names(self.spec.has_masks, self.spec.has_keypoints)
        if set(self.inputs) != expected_in or set(self.outputs) != set(expected_out):
            raise MaskrtError(f"{self.path} does not follow the deploy contract (I/O {names})")
        lo, _, hi = self.sidecar.profiles[0][contract.INPUT_IMAGES]
        self.max_batch_size: int | None = hi[0]
        self.fixed_size: tuple[int, int] | None = (
            (hi[2], hi[3]) if (lo[2], lo[3]) == (hi[2], hi[3]) else None
        )
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = []
        with _cuda.activated():
            for i in range(max(contexts, 1)):
                slot = self._make_slot(i % engine.num_optimization_profiles)
                self._all.append(slot)
                self._slots.put(slot)
        self._lock = threading.Lock()

    def _make_slot(self, profile: int) -> _Slot:
        context = self.engine.create_execution_context()
        stream = _cuda.Stream()
        if not context.set_optimization_profile_async(profile, stream.handle):
            raise MaskrtError(f"cannot select optimisation profile {profile}")
        bindings = {
            n: _Binding(numpy_dtype(self.engine.get_tensor_dtype(n)))
            for n in self.inputs + self.outputs
        }
        return _Slot(context, stream, bindings)

    def __call__(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        slot = self._slots.get()
        try:
            with _cuda.activated():
                return self._run(
                    slot, {contract.INPUT_IMAGES: images, contract.INPUT_IMAGE_SIZES: image_sizes}
                )
        finally:
            self._slots.put(slot)

    def _run(self, slot: _Slot, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx = slot.context
        for name, array in feeds.items():
            if not ctx.set_input_shape(name, tuple(array.shape)):
                raise MaskrtError(
                    f"input {name} of shape {list(array.shape)} is outside the engine's profile"
                )
            device, host = slot.bindings[name].ensure(tuple(array.shape))
            np.copyto(host, array, casting="same_kind")
            _cuda.copy_to_device(device, host, slot.stream)
            ctx.set_tensor_address(name, device.ptr)
        out_host: dict[str, np.ndarray[Any, Any]] = {}
        out_dev: dict[str, _cuda.DeviceBuffer] = {}
        for name in self.outputs:
            shape = _shape(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise MaskrtError(f"output {name} has an unresolved shape {list(shape)}")
            device, host = slot.bindings[name].ensure(shape)
            ctx.set_tensor_address(name, device.ptr)
            out_host[name], out_dev[name] = host, device
        if not ctx.execute_async_v3(slot.stream.handle):
            raise MaskrtError("TensorRT execution failed (see its log above)")
        for name in self.outputs:
            _cuda.copy_to_host(out_host[name], out_dev[name], slot.stream)
        slot.stream.synchronize()
        return {name: out_host[name].copy() for name in self.outputs}

    def close(self) -> None:
        with self._lock, _cuda.activated():
            for slot in self._all:
                slot.stream.synchronize()
                for b in slot.bindings.values():
                    if b.device is not None:
                        b.device.free()
                        b.device = None
            self._all.clear()
