"""The runtime's pycuda calls against the real pycuda, built here without a GPU.

pycuda's source package builds with the toolkit's headers, the cuRAND headers of the
``nvidia-curand`` wheel (installed with torch) and a stand-in ``libcuda`` generated from the
toolkit's ``cuda.h`` in which every driver entry point returns CUDA_ERROR_NO_DEVICE. The built
wheel is cached in pytest's cache folder. Then, in a child process:

* every pycuda name ``maskrt.runtime.trt._cuda`` uses exists and accepts the arguments the
  runtime passes: the arity is read from the signatures pycuda's Boost.Python docstrings carry
  (``name( (type)arg1, (type)arg2 [, (type)opt=...]) -> ret``);
* the runtime's no-GPU path ends in one clear MaskrtError, not a pycuda traceback.

Nothing here runs on a GPU: it checks names, signatures and the failure path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PYCUDA_VERSION = "2026.1"
CUDA_INCLUDE = next(
    (
        Path(p)
        for p in ("/usr/local/cuda/include", "/usr/local/cuda-13.0/include")
        if (Path(p) / "cuda.h").is_file()
    ),
    None,
)


def _curand() -> tuple[Path, Path] | None:
    """(include folder, libcurand.so.N) of the nvidia-curand wheel, if installed."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for header in Path(root).glob("*/include/curand.h"):
            for lib in sorted(header.parent.parent.glob("lib/libcurand.so.*")):
                return header.parent, lib
    return None


def _stand_in_libcuda(folder: Path, curand_lib: Path) -> None:
    """libcuda.so.1 exporting every CUresult entry point of cuda.h and cudaProfiler.h, each
    returning 100 (CUDA_ERROR_NO_DEVICE); beside
    it the names pycuda links and loads libcurand by (the wheel has only libcurand.so.N)."""
    assert CUDA_INCLUDE is not None
    (folder / "driver_api.h").write_text("#include <cuda.h>\n#include <cudaProfiler.h>\n")
    pre = subprocess.run(
        ["cc", "-E", "-P", f"-I{CUDA_INCLUDE}", str(folder / "driver_api.h")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # preprocessed: the versioned names (cuMemAlloc_v2, ...) pycuda links against
    names = sorted(set(re.findall(r"\bCUresult\s+(cu\w+)\s*\(", pre)))
    # pycuda words its errors with cuGetErrorString/Name, which must fill in their out-pointer
    text = {"cuGetErrorString": "no CUDA-capable device (stand-in libcuda)",
            "cuGetErrorName": "CUDA_ERROR_NO_DEVICE"}  # fmt: skip
    body = "".join(
        f'int {n}(int e, const char** s) {{ *s = "{text[n]}"; return 0; }}\n'
        if n in text
        else f"int {n}(void) {{ return 100; }}\n"  # CUDA_ERROR_NO_DEVICE
        for n in names
    )
    (folder / "stub.c").write_text("/* stand-in libcuda: no device */\n" + body)
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"),
         "-Wl,-soname,libcuda.so.1", str(folder / "stub.c")],
        check=True,
    )  # fmt: skip
    (folder / "libcuda.so").symlink_to("libcuda.so.1")
    (folder / curand_lib.name).symlink_to(curand_lib)
    (folder / "libcurand.so").symlink_to(curand_lib.name)


@pytest.fixture(scope="session")
def real_pycuda(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(folder holding the built pycuda package, folder holding the stand-in libcuda)."""
    curand = _curand()
    if CUDA_INCLUDE is None or curand is None or shutil.which("cc") is None:
        pytest.skip("needs the CUDA toolkit's cuda.h, cuRAND headers (nvidia-curand) and cc")
    cache = getattr(request.config, "cache", None)
    base = (
        Path(cache.mkdir("maskrt"))
        if cache is not None
        else request.getfixturevalue("tmp_path_factory").mktemp("maskrt")
    )
    root = base / f"pycuda-{PYCUDA_VERSION}"
    package, stub = root / "site", root / "libcuda"
    if (package / "pycuda" / "driver.py").is_file() and (stub / "libcuda.so.1").is_file():
        return package, stub
    shutil.rmtree(root, ignore_errors=True)
    (root / "sdist").mkdir(parents=True)
    stub.mkdir()
    _stand_in_libcuda(stub, curand[1])
    pip = [sys.executable, "-m", "pip"]
    got = subprocess.run(
        [*pip, "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         "-d", str(root / "sdist"), f"pycuda=={PYCUDA_VERSION}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if got.returncode != 0:
        pytest.skip(f"pycuda {PYCUDA_VERSION} source not available: {got.stderr[-300:]}")
    (sdist,) = (root / "sdist").glob("pycuda-*.tar.gz")
    env = {
        **os.environ,
        "CUDA_ROOT": str(CUDA_INCLUDE.parent),
        "CPATH": os.pathsep.join([str(CUDA_INCLUDE), str(curand[0])]),
        "LIBRARY_PATH": str(stub),
        "LDFLAGS": f"-L{stub}",
    }
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(root / "wheel"), str(sdist)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (root / "wheel").glob("pycuda-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(package)
    return package, stub


# What maskrt.runtime.trt._cuda calls, and with how many arguments (self included for methods).
_CALLS = """
import re, sys
import pycuda.driver as cuda

def arity(fn):
    # Boost.Python: "name( (T)a1, (T)a2 [, (T)opt=1]) -> R" per overload
    out = []
    for line in (fn.__doc__ or "").splitlines():
        m = re.match(r"\\s*\\w+\\((.*)\\) -> ", line)
        if m:
            args = m.group(1)
            optional = args.count("=")
            total = len(re.findall(r"\\([^()]+\\)\\w+", args))
            out.append((total - optional, total))
    return out

def accepts(fn, n):
    spans = arity(fn)
    assert spans, f"{fn!r}: no Boost.Python signature in its docstring"
    return any(lo <= n <= hi for lo, hi in spans)

checks = {
    "init": (cuda.init, 0),
    "Device.count": (cuda.Device.count, 0),
    "Device.__init__": (cuda.Device.__init__, 2),
    "Device.retain_primary_context": (cuda.Device.retain_primary_context, 1),
    "Device.compute_capability": (cuda.Device.compute_capability, 1),
    "Device.name": (cuda.Device.name, 1),
    "Context.get_current": (cuda.Context.get_current, 0),
    "Context.push": (cuda.Context.push, 1),
    "Context.pop": (cuda.Context.pop, 0),
    "Context.get_device": (cuda.Context.get_device, 0),
    "Stream.__init__": (cuda.Stream.__init__, 1),
    "Stream.synchronize": (cuda.Stream.synchronize, 1),
    "mem_alloc": (cuda.mem_alloc, 1),
    "DeviceAllocation.free": (cuda.DeviceAllocation.free, 1),
    "pagelocked_empty": (cuda.pagelocked_empty, 2),
    "memcpy_htod_async": (cuda.memcpy_htod_async, 3),
    "memcpy_dtoh_async": (cuda.memcpy_dtoh_async, 3),
}
for name, (fn, n) in checks.items():
    assert accepts(fn, n), f"{name} does not take {n} arguments: {arity(fn)}"
    print("ok", name, arity(fn))
assert isinstance(cuda.Stream.handle, property) or hasattr(cuda.Stream, "handle")
assert hasattr(cuda.DeviceAllocation, "__int__") and issubclass(cuda.LogicError, cuda.Error)

from maskrt.errors import MaskrtError
from maskrt.runtime.trt import _cuda
try:
    _cuda.driver()
except MaskrtError as e:
    print("refused:", e)
"""


@pytest.mark.slow  # the first run builds pycuda from source (~2-3 minutes), later runs reuse it
def test_runtime_pycuda_calls_match_real_pycuda(real_pycuda: tuple[Path, Path]) -> None:
    package, stub = real_pycuda
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")]),
        "LD_LIBRARY_PATH": os.pathsep.join([str(stub), os.environ.get("LD_LIBRARY_PATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _CALLS], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    assert "refused: CUDA is not usable here (cuInit failed" in child.stdout, child.stdout
