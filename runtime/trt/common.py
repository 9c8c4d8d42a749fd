"""TensorRT import, logger, plugin library loading and the facts of this machine."""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from maskrt.errors import MaskrtError
from maskrt.fileio import sha256_file

from ..sidecar import MachineFacts

if TYPE_CHECKING:
    import tensorrt as trt

NOT_INSTALLED = "TensorRT is not installed; install maskrt[trt] on a machine with TensorRT"


def tensorrt() -> ModuleType:
    """The tensorrt module, or a clear MaskrtError where it is missing."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        raise MaskrtError(NOT_INSTALLED) from None
    # tensorrt-stubs alone leaves a bare namespace package named tensorrt: not TensorRT.
    if not hasattr(module, "Builder"):
        raise MaskrtError(NOT_INSTALLED)
    return module


def trt_major() -> int:
    return int(tensorrt().__version__.split(".")[0])


@functools.lru_cache(maxsize=1)
def logger() -> trt.Logger:
    """One process-wide logger (TensorRT expects a single one)."""
    mod = tensorrt()
    log: trt.Logger = mod.Logger(mod.Logger.WARNING)
    return log


def plugin_library() -> Path | None:
    """Path of the built maskrt plugin library, or None where it was not built."""
    try:
        plugins = importlib.import_module("maskrt.plugins")
    except ImportError:
        return None
    locate = getattr(plugins, "plugin_library_path", None)
    if locate is None:
        return None
    try:
        path = locate()
    except (MaskrtError, OSError, FileNotFoundError):
        return None
    return Path(path) if path is not None and Path(path).is_file() else None


@functools.lru_cache(maxsize=1)
def _sha256(path: str) -> str:
    return sha256_file(path)


def plugin_sha256() -> str | None:
    lib = plugin_library()
    return None if lib is None else _sha256(os.fspath(lib))


_loaded: set[str] = set()

README = "plugins/multilevel_roialign/README.md"


def plugin_library_major(lib: Path) -> int | None:
    """The TensorRT major whose headers ``lib`` was compiled against, or None for a library that
    does not say (built before it exported ``maskrt_trt_plugin_tensorrt_major``).

    Opening the loadLibrary library with ctypes is harmless: it registers nothing by itself."""
    handle = ctypes.CDLL(os.fspath(lib))
    get = getattr(handle, "maskrt_trt_plugin_tensorrt_major", None)
    if get is None:
        return None
    get.restype = ctypes.c_int32
    get.argtypes = []
    return int(get())


def check_plugin_major(lib: Path, built: int | None, running: str) -> None:
    """Refuse a plugin library built for another TensorRT major than the running one: the
    plugin interfaces (and IPluginRegistry's vtable) it was compiled for are not that major's."""
    major = int(running.split(".")[0])
    if built is None:
        raise MaskrtError(
            f"{lib} does not say which TensorRT it was built for; rebuild maskrt against "
            f"TensorRT {major} headers (see {README})"
        )
    if built != major:
        raise MaskrtError(
            f"{lib} was built for TensorRT {built} but this process runs TensorRT {running}; "
            f"one build serves one TensorRT major: rebuild maskrt against TensorRT {major} "
            f"headers (see {README})"
        )


def load_plugins() -> Path | None:
    """Register maskrt's plugin creators with TensorRT, once per process.

    The route NVIDIA documents for a plugin library that exports ``getCreators``
    (``IPluginRegistry::loadLibrary``; see plugins/multilevel_roialign/README.md, which also says
    why the library never touches the registry itself). Before it, a library built for another
    TensorRT major is refused; after it, both creators must be in the registry, or this raises
    naming the library (``load_library`` returns None on failure and TensorRT would otherwise
    only say "plugin not found" at the first plugin node).
    """
    from maskrt.plugins.contract import (
        PLUGIN_NAME,
        PLUGIN_NAMESPACE,
        PLUGIN_VERSION,
        SINGLE_PLUGIN_NAME,
        SINGLE_PLUGIN_VERSION,
    )

    lib = plugin_library()
    if lib is None:
        return None
    key = os.fspath(lib)
    if key not in _loaded:
        mod = tensorrt()
        check_plugin_major(lib, plugin_library_major(lib), str(mod.__version__))
        registry: trt.IPluginRegistry = mod.get_plugin_registry()
        handle = registry.load_library(key)
        missing = [
            f"{name} v{version}"
            for name, version in (
                (PLUGIN_NAME, PLUGIN_VERSION),
                (SINGLE_PLUGIN_NAME, SINGLE_PLUGIN_VERSION),
            )
            if registry.get_creator(name, version, PLUGIN_NAMESPACE) is None
        ]
        if missing:
            how = "load_library returned None" if handle is None else "the library loaded"
            raise MaskrtError(
                f"TensorRT did not register {', '.join(missing)} from {key} ({how}; see the "
                f"TensorRT log above); see {README}"
            )
        _loaded.add(key)
    return lib


def machine_facts() -> MachineFacts:
    """TensorRT version, GPU and plugin library hash of this machine."""
    from ._cuda import device_facts

    version = str(tensorrt().__version__)
    name, cc = device_facts()
    return MachineFacts(
        tensorrt_version=version,
        gpu_name=name,
        compute_capability=cc,
        plugin_sha256=plugin_sha256(),
    )
