"""The native plugin sources build: the TensorRT plugin against TensorRT headers (compile-only
where libnvinfer is absent), the CUDA kernel with nvcc, and the CPU-only configuration."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from maskrt.plugins import PLUGIN_NAME, SINGLE_PLUGIN_NAME

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "plugins" / "multilevel_roialign"
# TensorRT's include/ folder (e.g. NVIDIA/TensorRT's include/ at a release tag); unset: the tests
# that compile against TensorRT skip, saying so.
_TRT_INCLUDE_ENV = os.environ.get("MASKRT_TRT_INCLUDE", "")
TRT_INCLUDE: Path | None = Path(_TRT_INCLUDE_ENV) if _TRT_INCLUDE_ENV else None
CMAKE = shutil.which("cmake") or "cmake"
NVCC = shutil.which("nvcc") or "nvcc"
HAS_CMAKE = shutil.which("cmake") is not None
HAS_NVCC = shutil.which("nvcc") is not None


def _trt_headers_skip() -> str | None:
    """Why the TensorRT plugin cannot be built here, or None."""
    if not HAS_CMAKE:
        return "cmake not found"
    if not HAS_NVCC:
        return "nvcc not found (the TensorRT plugin needs CUDA)"
    if TRT_INCLUDE is None:
        return "MASKRT_TRT_INCLUDE is not set (point it at a TensorRT include/ folder)"
    if not (TRT_INCLUDE / "NvInfer.h").is_file():
        return f"no NvInfer.h in MASKRT_TRT_INCLUDE={TRT_INCLUDE}"
    return None


_TRT_HEADERS_SKIP = _trt_headers_skip()
needs_trt_headers = pytest.mark.skipif(_TRT_HEADERS_SKIP is not None, reason=str(_TRT_HEADERS_SKIP))


def needs_tensorrt_build(test: Callable[..., None]) -> Callable[..., None]:
    """Skip (with the reason) where the TensorRT plugin cannot be built: no cmake, no nvcc, or
    no TensorRT headers."""
    return needs_trt_headers(test)


def _trt_include() -> Path:
    assert TRT_INCLUDE is not None  # the tests that call this skip without it
    return TRT_INCLUDE


def _configure_and_build(build: Path, target: str, *defines: str) -> str:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = subprocess.run(
        [
            CMAKE,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            *defines,
        ],
        capture_output=True,
        text=True,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run(
        [CMAKE, "--build", str(build), "--target", target, "-j", "2"],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return configure.stdout


@pytest.mark.slow  # ~20 s: configures CUDA and compiles against the TensorRT headers
@needs_tensorrt_build
def test_tensorrt_plugin_builds(tmp_path: Path) -> None:
    log = _configure_and_build(
        tmp_path,
        "maskrt_roialign_trt",
        f"-DTensorRT_INCLUDE_DIR={_trt_include()}",
        "-DCMAKE_CUDA_ARCHITECTURES=75",
    )
    assert "maskrt: TensorRT plugin: " in log
    lib_path = tmp_path / "plugins" / "libmaskrt_roialign_trt.so"
    assert lib_path.is_file()
    # The library loads without libnvinfer and lists both V3 creators via getCreators().
    lib = ctypes.CDLL(str(lib_path))
    lib.getCreators.restype = ctypes.c_void_p
    lib.getCreators.argtypes = [ctypes.POINTER(ctypes.c_int32)]
    n = ctypes.c_int32(0)
    assert lib.getCreators(ctypes.byref(n)) and n.value == 2
    # the V2-era entry point TensorRT 10.0 may look for lists no creator (ours are V3)
    lib.getPluginCreators.restype = ctypes.c_void_p
    lib.getPluginCreators.argtypes = [ctypes.POINTER(ctypes.c_int32)]
    n = ctypes.c_int32(-1)
    assert lib.getPluginCreators(ctypes.byref(n)) and n.value == 0
    assert hasattr(lib, "setLoggerFinder")
    # the plugin names in the binary are the contract's
    blob = lib_path.read_bytes()
    assert PLUGIN_NAME.encode() in blob and SINGLE_PLUGIN_NAME.encode() in blob


@pytest.mark.slow  # ~40 s: configures CUDA and compiles the plugin for sm_87
@needs_tensorrt_build
def test_plugin_finds_tensorrt_in_a_jetpack_layout(tmp_path: Path) -> None:
    """JetPack 6 (aarch64) installs TensorRT's headers in /usr/include/aarch64-linux-gnu and
    libnvinfer in /usr/lib/aarch64-linux-gnu. A fake sysroot with that layout (the real headers
    copied in, no libnvinfer) is found with no TensorRT path given, and the plugin compiles for
    Orin's sm_87 against it. Compile-only: nothing here is aarch64 code or a TensorRT run."""
    sysroot = tmp_path / "jetson"
    include = sysroot / "usr" / "include" / "aarch64-linux-gnu"
    shutil.copytree(_trt_include(), include)
    (sysroot / "usr" / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    log = _configure_and_build(
        tmp_path / "build",
        "maskrt_roialign_trt",
        f"-DCMAKE_FIND_ROOT_PATH={sysroot}",
        "-DCMAKE_CUDA_ARCHITECTURES=87",
    )
    line = next(x for x in log.splitlines() if "maskrt: TensorRT plugin:" in x)
    assert f"headers {include}" in line and "compile-only" in line, line
    cuda = next(x for x in log.splitlines() if "maskrt: CUDA RoIAlign kernels:" in x)
    assert "architectures 87: as asked" in cuda, cuda
    assert (tmp_path / "build" / "plugins" / "libmaskrt_roialign_trt.so").is_file()


def _configure_only(build: Path, *defines: str) -> str:
    configure = subprocess.run(
        [CMAKE, "-S", str(ROOT), "-B", str(build), "-DMASKRT_WITH_CUDA=OFF", *defines],
        capture_output=True,
        text=True,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    return configure.stdout


@pytest.mark.skipif(not HAS_CMAKE, reason="cmake not found")
@pytest.mark.parametrize(
    ("version_header", "expected"),
    [
        # TensorRT 8.x (JetPack 5): numbers on NV_TENSORRT_MAJOR/MINOR; no IPluginV3 loader
        ("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n", "TensorRT 8.6 headers"),
        # TensorRT 10.x (10.16 on) and 11.x: the numbers sit on TRT_*_ENTERPRISE
        (
            "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n"
            "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n"
            "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n",
            "TensorRT 11.1 headers",
        ),
    ],
)
def test_configure_reads_the_tensorrt_version(
    tmp_path: Path, version_header: str, expected: str
) -> None:
    """CMake reads the version from NvInferVersion.h and skips TensorRT < 10 with a status line
    instead of failing the install. Stand-in headers written here (the version lines only)."""
    include = tmp_path / "include"
    include.mkdir()
    (include / "NvInfer.h").write_text("// stand-in: only its presence is looked for\n")
    (include / "NvInferVersion.h").write_text(version_header)
    log = _configure_only(tmp_path / "build", f"-DTensorRT_INCLUDE_DIR={include}")
    line = next(x for x in log.splitlines() if "maskrt: TensorRT plugin:" in x)
    assert expected in line, line
    assert ("needs TensorRT 10 or newer" in line) == expected.startswith("TensorRT 8.")


@pytest.mark.skipif(not (HAS_CMAKE and HAS_NVCC), reason="cmake or nvcc not found")
def test_configure_compares_tensorrt_and_cuda_majors(tmp_path: Path) -> None:
    """A TensorRT built for another CUDA major gets a CMake warning naming both versions.
    Stand-in headers (version lines only) in folders named as TensorRT's tar package names them;
    the toolkit here is CUDA 13. One build folder, reconfigured per case (~15 s in all)."""
    cases = [
        ("TensorRT-10.3.0.26.Linux.x86_64-gnu.cuda-12.5", "", "built for CUDA 12.5"),
        ("TensorRT-11.1.0.1.Linux.x86_64-gnu.cuda-13.0", "", "CUDA version: 13.0"),
        ("trt", "12.6", "built for CUDA 12.6"),
        ("trt", "", "CUDA version: unknown"),
    ]
    for folder, cuda_version, expected in cases:
        include = tmp_path / folder / "include"
        include.mkdir(parents=True, exist_ok=True)
        (include / "NvInfer.h").write_text("// stand-in: only its presence is looked for\n")
        (include / "NvInferVersion.h").write_text(
            "#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 3\n"
        )
        configure = subprocess.run(
            [
                CMAKE,
                "-S",
                str(ROOT),
                "-B",
                str(tmp_path / "build"),
                f"-DTensorRT_INCLUDE_DIR={include}",
                f"-DTensorRT_CUDA_VERSION={cuda_version}",
            ],
            capture_output=True,
            text=True,
        )
        assert configure.returncode == 0, configure.stdout + configure.stderr
        log = configure.stdout + configure.stderr
        assert expected in log, (folder, log)
        assert ("CMake Warning" in log) == ("built for CUDA 12" in expected), (folder, log)


@pytest.mark.skipif(not HAS_NVCC, reason="nvcc not found")
def test_cuda_kernel_compiles_with_nvcc(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            NVCC,
            "-std=c++17",
            "-arch=sm_75",
            "-Xcompiler",
            "-fPIC",
            "-c",
            str(SOURCES / "roialign_cuda.cu"),
            "-I",
            str(SOURCES),
            "-o",
            str(tmp_path / "k.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.o").stat().st_size > 0


@pytest.mark.skipif(not HAS_CMAKE, reason="cmake not found")
def test_cpu_only_configuration_builds(tmp_path: Path) -> None:
    """No CUDA (and hence no TensorRT plugin): configuring still succeeds, with STATUS lines."""
    headers = [f"-DTensorRT_INCLUDE_DIR={TRT_INCLUDE}"] if TRT_INCLUDE is not None else []
    log = _configure_and_build(tmp_path, "maskrt_roialign_cpu", "-DMASKRT_WITH_CUDA=OFF", *headers)
    assert "CUDA RoIAlign kernels: disabled" in log
    assert "TensorRT plugin: skipped" in log or "NvInfer.h not found" in log
    assert (tmp_path / "plugins" / "libmaskrt_roialign_cpu.so").is_file()


_ROUTE = """
import ctypes, os, sys
standin_path, route, plugin = sys.argv[1:4]
if route == "preload":  # the self-registering library first (LD_PRELOAD): it brings libnvinfer
    ctypes.CDLL(plugin)
standin = ctypes.CDLL(standin_path, mode=ctypes.RTLD_GLOBAL)  # "libnvinfer" is in the process
standin.standin_load_library.restype = ctypes.c_void_p
standin.standin_load_library.argtypes = [ctypes.c_char_p]
handle = None
if route == "dlopen":  # ctypes.CDLL, polygraphy --plugins, Triton plugins=, --staticPlugins
    ctypes.CDLL(plugin)
elif route == "loadLibrary":  # IPluginRegistry::loadLibrary (load_library, --dynamicPlugins)
    handle = standin.standin_load_library(plugin.encode())
print(standin.standin_registered(), standin.standin_duplicate_attempts(), standin.standin_calls(),
      standin.standin_reentries(), bool(handle))
if handle:  # deregisterLibrary removes what loadLibrary registered: here, both creators
    standin.standin_deregister_library.argtypes = [ctypes.c_void_p]
    standin.standin_deregister_library(handle)
    print(standin.standin_registered())
"""


@pytest.fixture(scope="module")
def native_test_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin library and the test-only targets of tests/native, built once."""
    build = tmp_path_factory.mktemp("native-tests")
    _configure_and_build(
        build, "maskrt_roialign_trt", f"-DTensorRT_INCLUDE_DIR={_trt_include()}",
        "-DCMAKE_CUDA_ARCHITECTURES=75", "-DMASKRT_BUILD_TESTS=ON",
    )  # fmt: skip
    built = subprocess.run(
        [CMAKE, "--build", str(build), "--target", "maskrt_standin_nvinfer",
         "maskrt_plugin_interface_test", "maskrt_roialign_trt_autoreg_standin", "-j", "2"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return build


@pytest.mark.slow  # with the fixture: ~10 s to build the plugin and the test programs
@needs_trt_headers
def test_plugin_methods_through_tensorrt_header_interfaces(native_test_build: Path) -> None:
    """The plugin's own methods through TensorRT's header interfaces, NOT a TensorRT run:
    tests/native/plugin_interface_test.cpp calls createPlugin (parser-typed fields),
    getOutputShapes (an IExprBuilder on TensorRT's apiv interfaces), getOutputDataTypes, the
    supportsFormatCombination table, getWorkspaceSize, the serialisation round trip, clone,
    attachToContext and bad fields on the real library. Everything but enqueue()."""
    program = native_test_build / "standin" / "maskrt_plugin_interface_test"
    plugin = native_test_build / "plugins" / "libmaskrt_roialign_trt.so"
    run = subprocess.run([str(program), str(plugin)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "checks passed" in run.stdout and "FAIL" not in run.stdout


_MAJOR_LINE = (
    "maskrt RoIAlign plugin: built for TensorRT {} but the loaded libnvinfer is TensorRT {}"
)


def _other_major(major: int) -> int:
    return 11 if major == 10 else 10


@pytest.mark.slow
@needs_trt_headers
@pytest.mark.parametrize(
    ("library", "route", "expected"),
    [
        # registered once, by the loader, with no registry call from the library (loadLibrary
        # may hold the registry's lock); the loader then owns the creators
        ("trt", "loadLibrary", ["2 0 0 0 True", "0"]),
        # the loadLibrary library does nothing by itself: dlopen-only loaders need the other one
        ("trt", "dlopen", ["0 0 0 0 False"]),
        # the self-registering library: after libnvinfer, or first (it links libnvinfer)
        ("autoreg", "dlopen", ["2 0 2 0 False"]),
        ("autoreg", "preload", ["2 0 2 0 False"]),
    ],
)
def test_registration_routes_through_a_standin_libnvinfer(
    native_test_build: Path, library: str, route: str, expected: list[str]
) -> None:
    """Each library, opened the way its loaders open it, registers both creators exactly once:
    no duplicate registration attempted, no registry call inside loadLibrary (re-entry), a
    valid loader handle. Not a TensorRT run: libnvinfer is a stand-in written here
    (tests/native/standin_nvinfer.cpp) that implements TensorRT's IPluginRegistry header
    interface and its documented loadLibrary; the plugin libraries are the real ones (the
    self-registering one linked to the stand-in, as it would be to libnvinfer)."""
    out, err = _run_route(native_test_build, library, route, {})
    # registered creators, duplicate registrations attempted, registry calls by the plugin, of
    # those inside loadLibrary, loader handle valid; after deregisterLibrary: registered creators
    assert out == expected, (out, err)
    assert "maskrt RoIAlign plugin" not in err, err


@pytest.mark.slow
@needs_trt_headers
@pytest.mark.parametrize(
    ("library", "route"), [("trt", "loadLibrary"), ("autoreg", "dlopen"), ("autoreg", "preload")]
)
def test_a_libnvinfer_of_another_major_gets_no_registry_call(
    native_test_build: Path, library: str, route: str
) -> None:
    """IPluginRegistry's V3 methods sit at other vtable slots in TensorRT 10 and 11: a library
    built for one major, loaded beside the other's libnvinfer (the stand-in reporting the other
    major from getInferLibMajorVersion), makes no registry call, registers nothing and says so in
    one line. Not a TensorRT run (see the test above)."""
    built = int(_header_major(_trt_include()))
    other = _other_major(built)
    out, err = _run_route(native_test_build, library, route, {"STANDIN_NVINFER_MAJOR": str(other)})
    assert out[0].split()[:4] == ["0", "0", "0", "0"], (out, err)
    lines = [x for x in err.splitlines() if "maskrt RoIAlign plugin" in x]
    assert len(lines) == 1 and _MAJOR_LINE.format(built, other) in lines[0], err


def _header_major(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    for name in ("TRT_MAJOR_ENTERPRISE", "NV_TENSORRT_MAJOR"):
        for line in text.splitlines():
            parts = line.split()
            if parts[:2] == ["#define", name] and len(parts) > 2 and parts[2].isdigit():
                return parts[2]
    raise AssertionError(f"no TensorRT major in {include}/NvInferVersion.h")


def _run_route(build: Path, library: str, route: str, env: dict[str, str]) -> tuple[list[str], str]:
    (standin,) = (build / "standin").glob("libnvinfer.so.*")
    plugin = (
        build / "plugins" / "libmaskrt_roialign_trt.so"
        if library == "trt"
        else build / "standin" / "libmaskrt_roialign_trt_autoreg.so"
    )
    child = subprocess.run(
        [sys.executable, "-c", _ROUTE, str(standin), route, str(plugin)],
        capture_output=True,
        text=True,
        env={**os.environ, "STANDIN_NVINFER_MAJOR": "", **env},
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    return child.stdout.splitlines(), child.stderr


@pytest.mark.slow
@needs_trt_headers
def test_runtime_refuses_a_plugin_library_of_another_major(
    native_test_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """maskrt's runtime reads the major the real library was built for and refuses another
    TensorRT before any registry call. `tensorrt` is a stand-in module carrying only a version
    and a registry getter that fails the test if reached (no TensorRT here)."""
    import types

    from maskrt.errors import MaskrtError
    from maskrt.runtime.trt import common

    built = int(_header_major(_trt_include()))
    lib = native_test_build / "plugins" / "libmaskrt_roialign_trt.so"
    assert common.plugin_library_major(lib) == built
    other = _other_major(built)

    def unreachable() -> None:
        raise AssertionError("the registry was reached")

    fake = types.ModuleType("tensorrt")
    fake.__version__ = f"{other}.1.0"  # type: ignore[attr-defined]
    fake.Builder = object  # type: ignore[attr-defined]
    fake.get_plugin_registry = unreachable  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setenv("MASKRT_PLUGIN_DIR", str(lib.parent))
    common._loaded.clear()
    with pytest.raises(MaskrtError) as refused:
        common.load_plugins()
    message = str(refused.value)
    assert f"built for TensorRT {built} but this process runs TensorRT {other}.1.0" in message
    assert "\n" not in message and "README" in message
