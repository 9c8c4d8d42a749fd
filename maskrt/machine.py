"""Where a measurement was taken: the machine's CPU, its SIMD features, library versions, the
commit. Every benchmark report (``maskrt bench``, ``benchmarks/``) starts with this line."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# CPU features that change what ONNX Runtime and PyTorch run (MLAS/oneDNN kernels)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=here)
        return run.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if git("status", "--porcelain", "--untracked-files=no"):
            commit += "+uncommitted"  # figures of code that no commit holds
        return commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_facts() -> dict[str, Any]:
    """CPU model, its SIMD features, cores, torch/onnxruntime versions (and torch's thread count
    where torch is loaded), date and commit. Imports neither library."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags"):
                    flags = set(ln.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    torch = sys.modules.get("torch")
    return {
        "cpu": cpu,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """:func:`machine_facts` in one Markdown line."""
    simd = ", ".join(m.get("simd", [])) or "no SIMD flags read"
    threads = f" ({m['torch_threads']} threads)" if m.get("torch_threads") else ""
    return (
        f"Machine: {m['cpu']} ({simd}), {m['cores']} cores, torch {m['torch']}{threads}, "
        f"onnxruntime {m['onnxruntime']}; {m['date']}, commit {m['commit']}"
    )


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB.

    Linux: ``VmHWM``, which starts afresh with the new address space of ``exec``; ``ru_maxrss``
    would still hold the parent's high-water mark from before the spawn.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
