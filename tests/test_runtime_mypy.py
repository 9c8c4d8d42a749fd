"""The TensorRT layer type-checks with ``mypy --strict`` against tensorrt-stubs.

tensorrt-stubs installs ``tensorrt/`` and ``tensorrt_bindings/`` as bare ``.pyi`` files (no
``py.typed``, so mypy skips them from site-packages) and a few generated signatures are not valid
Python (a parameter named ``in``; a required parameter after defaulted ones). The test copies the
stubs into a temporary folder, loosens exactly those signatures to ``*args, **kwargs`` and points
MYPYPATH there; everything else is checked as published.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
TRT_LAYER = [
    "runtime/trt/__init__.py",
    "runtime/trt/_cuda.py",
    "runtime/trt/common.py",
    "runtime/trt/build.py",
    "runtime/trt/engine.py",
    "runtime/sidecar.py",
    "runtime/profiles.py",
]
STUBS_PIN = "tensorrt-stubs==10.13.0.35.1"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
# Our code is checked strictly; the generated stubs' own inconsistencies are not ours to report.
MYPY_CONFIG = """[mypy]
python_version = 3.11
ignore_missing_imports = True

[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt,tensorrt_bindings]
ignore_errors = True
"""


def _installed_stubs_root() -> Path | None:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent.parent
    return root if (root / "tensorrt" / "__init__.pyi").is_file() else None


def _pip_install_stubs(target: Path) -> Path | None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        STUBS_PIN,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        target
        if done.returncode == 0 and (target / "tensorrt" / "__init__.pyi").is_file()
        else None
    )


def _loosen(text: str) -> str:
    """Replace the signature of every ``def`` that Python cannot parse with ``*args, **kwargs``."""
    lines = text.splitlines()
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            while i > 0 and not lines[i].lstrip().startswith("def "):
                i -= 1
            m = re.match(r"^(\s*def \w+)\((self, )?.*\)(\s*->.*:)\s*$", lines[i])
            if m is None:
                raise
            self_arg = "self, " if m.group(2) else ""
            lines[i] = (
                f"{m.group(1)}({self_arg}*args: typing.Any, **kwargs: typing.Any){m.group(3)}"
            )
    raise AssertionError("too many unparsable stub signatures")


def _unshadow_bool(text: str) -> str:
    """The stubs declare ``bool: DataType`` (TensorRT's ``trt.bool``) at module level, which
    shadows the builtin in every ``-> bool`` annotation; spell those as ``builtins.bool``."""
    return "\n".join(
        line if line.startswith("bool:") else re.sub(r"(?<![\w.])bool(?!\w)", "builtins.bool", line)
        for line in text.splitlines()
    )


def _prepare_stubs(source: Path, dest: Path) -> Path:
    for package in STUB_PACKAGES:
        for stub in (source / package).rglob("*.pyi"):
            out = dest / package / stub.relative_to(source / package)
            out.parent.mkdir(parents=True, exist_ok=True)
            text = _unshadow_bool(stub.read_text())
            out.write_text(_loosen("import builtins\nimport typing\n" + text))
    return dest


def test_trt_layer_passes_mypy_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    source = _installed_stubs_root() or _pip_install_stubs(tmp_path / "pip")
    if source is None:
        pytest.skip(f"tensorrt-stubs cannot be imported and `pip install {STUBS_PIN}` failed")
    stubs = _prepare_stubs(source, tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    env = dict(os.environ, MYPYPATH=str(stubs))
    base = [sys.executable, "-m", "mypy", "--config-file", str(config), "--strict"]
    base += ["--no-incremental", "--cache-dir", os.devnull]
    done = subprocess.run(
        [*base, *TRT_LAYER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The stubs really were used: a deliberate misuse of the TensorRT API must be caught.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import tensorrt as trt\n"
        "def f(c: trt.IBuilderConfig) -> None:\n"
        "    c.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 'lots')\n"
    )
    bad = subprocess.run(
        [*base, str(probe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert bad.returncode != 0 and "set_memory_pool_limit" in bad.stdout, bad.stdout


def test_every_package_passes_mypy() -> None:
    """All our packages (every folder pyproject maps into the wheel) type-check under the
    project's mypy settings (pyproject.toml)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = list(config["tool"]["scikit-build"]["wheel"]["packages"].values())
    cmd = [sys.executable, "-m", "mypy", "--cache-dir", os.devnull, *packages]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
