"""One prepared GPU run: build, test and time the CUDA RoIAlign kernel and the deploy model.

Meant for the lent GPU machine (H100/H200, torch and nvcc, no TensorRT, no network), within
8 minutes, and for any CPU machine, where the GPU parts are skipped and say so. Parts, in order:

  build   the native libraries (CPU + CUDA kernel, no TensorRT) with CMake into ``--build-dir``;
          a build made beforehand on a CPU machine is reused when the native sources still hash
          the same and the libraries load; otherwise it is rebuilt where the script runs.
  tests   the CUDA kernel tests (tests/test_plugin_cuda.py: fp32 and fp16 against torchvision's
          CUDA RoIAlign on tests/_roialign_cases.py's box kinds), through pytest.
  kernel  one RoIAlign call, maskrt's CUDA kernel vs torchvision's CUDA ``MultiScaleRoIAlign``
          (bench_roialign.py's workload: the box pooler, 1000 RoIs x 256 channels, 7x7, and the
          mask pooler, 100 RoIs, 14x14), fp32 and fp16; goals >= 3x (fp32), >= 5x (fp16) are
          reported, not asserted.
  deploy  bench_deploy_torch.py at batch 1: torchvision eager vs the deploy model with its
          reference RoIAlign and with maskrt's kernel, latency and differences in detections.
  stages  the deploy model with maskrt's kernel behind maskrt's numpy runtime, per batch (1, 4)
          at 800x1344: pre-processing, host->device copy, inference, device->host copy and
          post-processing (mask pasting), each timed alone (wall clock, synchronised).

Writes ``gpu_report.json`` and ``gpu_report.md`` (device line, command, date, commit; the
Markdown is meant for BENCHMARKS.md) into ``--out`` after every part and every row, plus
``build.log`` (when it builds), ``kernel_tests.log``/``.xml`` and ``errors.log`` (tracebacks):
six files at most, within what the device tool brings back. A part starts only with its
expected time (PART_SECONDS) left of ``--budget``; a watchdog ends the run at ``--budget``
seconds with whatever the report holds. Where maskrt is not installed (the GPU machine), it is
imported from this checkout through a folder of symlinks laid out like the wheel.

    python benchmarks/gpu_run.py --build-only      # on the CPU machine: build/gpu-lib, ~1 MiB
    # then on the GPU machine (README.md, "On a GPU": the device tool's call, carry included)
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_run.py --out $OUT
    python benchmarks/gpu_run.py --quick           # fewer repetitions
    python benchmarks/gpu_run.py --device cpu --parts stages --arch demo_maskrcnn_v2 --size 128x160
                                                   # the stage code on the CPU (checks, no figures)

Exit status: 0 when every part ran or was skipped, 1 when one failed or the budget ran out,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
PARTS = ("build", "tests", "kernel", "deploy", "stages")
GOALS = {"fp32": 3.0, "fp16": 5.0}  # RoIAlign call, torchvision time / maskrt time (issue 32)
STAGES = ("pre", "h2d", "infer", "d2h", "post")
# Seconds a part is expected to need on an H100 (guesses until the first run measures them):
# a part starts only with this much of the budget left.
PART_SECONDS = {"build": 60, "tests": 60, "kernel": 40, "deploy": 60, "stages": 60}
# What decides whether a build made elsewhere still fits these sources.
NATIVE_SOURCES = ("CMakeLists.txt", "plugins/CMakeLists.txt", "plugins/_native.py.in")
NATIVE_SOURCE_DIRS = ("plugins/multilevel_roialign",)
BUILD_INFO = "build_info.json"
CPU_LIB = "libmaskrt_roialign_cpu.so"
CUDA_LIB = "libmaskrt_roialign_cuda.so"
REPORT_JSON = "gpu_report.json"
REPORT_MD = "gpu_report.md"


class UsageError(Exception):
    """Bad input from the user: one line, exit 2."""


# --------------------------------------------------------------------------------------------
# small pure helpers


def parse_size(text: str) -> tuple[int, int]:
    """``"800x1344"`` -> (800, 1344); both multiples of 32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size wants HxW like 800x1344, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise UsageError(f"--size wants positive multiples of 32, got {text!r}")
    return h, w


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    """A comma-separated subset of ``allowed``, in the order given."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UsageError(
            f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}"
        )
    return items


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--batches takes comma-separated sizes like 1,4, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batches takes sizes >= 1, got {text!r}")
    return batches


def summary_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """Median and 90th percentile (nearest rank) of a list of milliseconds."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90}


def files_hash(root: Path, paths: Sequence[str]) -> str:
    """SHA-256 over the named files (relative path and bytes; a missing file counts too)."""
    h = hashlib.sha256()
    for rel in sorted(paths):
        h.update(rel.encode() + b"\0")
        p = root / rel
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def native_source_files(root: Path) -> list[str]:
    """The files a native build is made of, relative to ``root``."""
    files = list(NATIVE_SOURCES)
    for d in NATIVE_SOURCE_DIRS:
        files += [str(p.relative_to(root)) for p in sorted((root / d).rglob("*")) if p.is_file()]
    return files


def checkout_state(root: Path) -> dict[str, Any] | None:
    """The checkout's commit, whether tracked files differ from it, and a hash of the tracked
    files (to recognise the same tree where git is absent); None without a git repository."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            ).stdout

        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        files = git("ls-files").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {
        "commit": commit,
        "dirty": dirty,
        "tracked_files": files,
        "tracked_hash": files_hash(root, files),
    }


def commit_line(root: Path, info: dict[str, Any] | None) -> str:
    """The commit the figures belong to: git's where the checkout has one, else the one the
    build step recorded, with whether the tracked files still hash the same."""
    state = checkout_state(root)
    if state is not None:
        return state["commit"][:12] + (" +uncommitted" if state["dirty"] else "")
    if info and info.get("commit"):
        same = files_hash(root, info.get("tracked_files", [])) == info.get("tracked_hash")
        dirty = " +uncommitted" if info.get("dirty") else ""
        how = "unchanged since" if same else "CHANGED since"
        return f"{info['commit'][:12]}{dirty} (tracked files {how} the build step; no git here)"
    return "unknown (no git here and no build info)"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the report


class Report:
    """The run's findings, written (atomically) after every change, from either thread."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.data = data
        self.lock = threading.RLock()
        self.current: str | None = None

    def set_part(self, name: str, **fields: Any) -> None:
        with self.lock:
            self.data["parts"].setdefault(name, {}).update(fields)
            self.write()

    def write(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.monotonic() - self.data["_t0"], 1)
            public = {k: v for k, v in self.data.items() if not k.startswith("_")}
            _atomic_write(self.out / REPORT_JSON, json.dumps(public, indent=2) + "\n")
            _atomic_write(self.out / REPORT_MD, render_markdown(public))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


Column = tuple[str, Callable[[dict[str, Any]], Any]]  # header, cell of a row


def _key(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def rows_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    return md_table([c[0] for c in columns], [[cell(r) for _, cell in columns] for r in rows])


KERNEL_TABLE: tuple[Column, ...] = (
    ("workload", _key("workload")),
    ("dtype", _key("dtype")),
    ("torchvision ms", _key("torchvision_ms")),
    ("maskrt ms", _key("maskrt_ms")),
    ("ratio", _key("ratio")),
    ("goal", lambda k: f"≥ {k['goal']:g}×"),
    ("met", lambda k: "yes" if k["met"] else "no"),
    ("max abs diff", _key("max_abs_diff")),
    ("maskrt GB/s", _key("maskrt_gbytes_per_s")),
)
DEPLOY_TABLE: tuple[Column, ...] = (
    ("dtype", _key("dtype")),
    ("impl", _key("impl")),
    ("median ms", _key("median_ms")),
    ("p90 ms", _key("p90_ms")),
    ("tv/row", _key("ratio_vs_torchvision")),
    ("peak MiB", _key("peak_mem_mib")),
    ("max Δscore", _key("max_score_diff")),
    ("max Δbox", _key("max_box_diff")),
)
STAGE_TABLE: tuple[Column, ...] = (
    ("device", _key("device")),
    ("dtype", _key("dtype")),
    ("batch", _key("batch")),
    *((st, lambda s, st=st: s[st]["median_ms"]) for st in STAGES),
    ("total", _key("total_median_ms")),
    ("img/s", _key("images_per_s")),
    ("host share", lambda s: f"{100 * s['host_share']:.0f} %"),
    ("detections", lambda s: "/".join(map(str, s["detections"]))),
    ("same as torchvision", _key("same_detections")),
)


def render_markdown(r: dict[str, Any]) -> str:
    """The report as a BENCHMARKS.md section."""
    out = [
        f"## {r['date'][:10]}: GPU run ({r['device_short']})",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"- Device: {r['device']}",
        f"- Machine: {r['machine']}",
        f"- Commit: {r['commit']}; date {r['date']}; {r['elapsed_s']} s of a {r['budget_s']} s "
        "budget",
        f"- Native libraries: {r.get('libraries', '–')}",
        "",
        md_table(
            ["part", "status", "seconds", "note"],
            [
                [name, p.get("status", "not run"), p.get("seconds"), p.get("reason", "")]
                for name, p in r["parts"].items()
            ],
        ),
    ]
    tests = r["parts"].get("tests", {})
    if tests.get("counts"):
        c = tests["counts"]
        out += [
            "",
            f"Kernel tests: {c['passed']} passed, {c['failed']} failed, "
            f"{c['errors']} errors, {c['skipped']} skipped.",
        ]
        out += [f"- FAILED {f}" for f in tests.get("failures", [])]
    sections = (
        ("kernel", KERNEL_TABLE, "RoIAlign, one call (CUDA events, median of the repetitions)"),
        ("deploy", DEPLOY_TABLE, "Deploy model vs torchvision eager, batch 1, padded input"),
        ("stages", STAGE_TABLE, "Stages, {what} (median ms over the repetitions)"),
    )
    for name, columns, title in sections:
        part = r["parts"].get(name, {})
        if part.get("rows"):
            out += ["", title.format(what=part.get("what", "")) + ":", ""]
            out.append(rows_table(columns, part["rows"]))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# build


def read_build_info(lib_dir: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((lib_dir / BUILD_INFO).read_text())
        return info
    except (OSError, ValueError):
        return None


def libraries_load(lib_dir: Path, with_cuda: bool) -> str | None:
    """None when the libraries open here, else why not (another machine's build may not)."""
    import ctypes

    names = [CPU_LIB] + ([CUDA_LIB] if with_cuda else [])
    for name in names:
        try:
            ctypes.CDLL(str(lib_dir / name))
        except OSError as e:
            return f"{name} does not load here: {e}"
    return None


def reuse_reason(root: Path, lib_dir: Path, cuda_arch: str) -> tuple[bool, str]:
    """Whether the build in ``lib_dir`` fits these sources and this machine, and why (not)."""
    info = read_build_info(lib_dir)
    if info is None:
        return False, f"no build in {lib_dir}"
    if info.get("native_hash") != files_hash(root, native_source_files(root)):
        return False, "the native sources changed since that build"
    if info.get("cuda_arch") != cuda_arch:
        return False, f"that build is for CUDA arch {info.get('cuda_arch')}, not {cuda_arch}"
    why = libraries_load(lib_dir, info.get("cuda") == "yes")
    if why:
        return False, why
    return True, f"reused the build of {info.get('date', '?')} on {info.get('host', '?')}"


def cmake_build(root: Path, lib_dir: Path, cuda_arch: str, log: Path) -> dict[str, Any]:
    """Configure, build and install the CPU and CUDA libraries into ``lib_dir`` (flat), with a
    build_info.json saying from which sources, for which arch, on which machine."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake not found on PATH")
    work = lib_dir.with_name(lib_dir.name + "-cmake")
    stage = lib_dir.with_name(lib_dir.name + ".tmp")
    cache = work / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={root}\n" not in cache.read_text():
        shutil.rmtree(work)  # configured from another checkout (or carried from another machine)
    shutil.rmtree(stage, ignore_errors=True)
    defines = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DMASKRT_WITH_TENSORRT=OFF",  # no TensorRT on the GPU machine; its build is tested here
        "-DMASKRT_INSTALL_DIR=.",
    ]
    if cuda_arch == "none":
        defines.append("-DMASKRT_WITH_CUDA=OFF")
    else:
        defines += ["-DMASKRT_WITH_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not cache.is_file() else []
    steps = [
        [cmake, "-S", str(root), "-B", str(work), *generator, *defines],
        [cmake, "--build", str(work), "-j", str(os.cpu_count() or 2)],
        [cmake, "--install", str(work), "--prefix", str(stage)],
    ]
    with open(log, "a") as f:
        for cmd in steps:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"`{' '.join(cmd[:2])} ...` failed (exit {done.returncode}); see {log.name}"
                )
    configure_log = log.read_text()
    has_cuda = (stage / CUDA_LIB).is_file()
    if cuda_arch != "none" and not has_cuda:
        why = "nvcc not found" if "nvcc not found" in configure_log else "see the build log"
        print(f"build: CUDA kernel not built ({why}); CPU library only", flush=True)
    nvcc = shutil.which("nvcc")
    nvcc_version = ""
    if nvcc:
        lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        release = [ln for ln in lines.splitlines() if "release" in ln]
        nvcc_version = release[0].strip() if release else lines.strip()[-80:]
    info = {
        "native_hash": files_hash(root, native_source_files(root)),
        "cuda_arch": cuda_arch,
        "cuda": "yes" if has_cuda else "no",
        "nvcc": nvcc_version,
        "host": os.uname().nodename,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(checkout_state(root) or {}),
    }
    (stage / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(lib_dir, ignore_errors=True)
    os.replace(stage, lib_dir)
    return info


def refresh_checkout_state(root: Path, lib_dir: Path) -> None:
    """Record the checkout's current commit in a reused build (where git is here): the build
    step runs again after the last commit, and the GPU machine has no git to ask."""
    state = checkout_state(root)
    info = read_build_info(lib_dir)
    if state is not None and info is not None and any(info.get(k) != v for k, v in state.items()):
        _atomic_write(lib_dir / BUILD_INFO, json.dumps(info | state, indent=1) + "\n")


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --------------------------------------------------------------------------------------------
# imports: maskrt from this checkout even where it is not installed (the GPU machine)


def import_shim(root: Path, shim: Path) -> Path | None:
    """Make ``import maskrt`` work without an install; None when it already does.

    The wheel maps repository folders to subpackages (pyproject's wheel.packages); a folder of
    symlinks, ``shim/maskrt``, lays them out the same way.
    """
    spec = importlib.util.find_spec("maskrt")
    if spec is not None and spec.origin is not None:  # installed (a bare folder of built
        return None  # libraries in site-packages is a namespace package: origin None)
    import tomllib

    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["scikit-build"]["wheel"][
        "packages"
    ]
    shutil.rmtree(shim, ignore_errors=True)
    top = shim / "maskrt"
    top.mkdir(parents=True)
    for child in (root / mapping["maskrt"]).iterdir():
        (top / child.name).symlink_to(child)
    for dst, src in mapping.items():
        if dst != "maskrt":
            (shim / dst).symlink_to(root / src)
    sys.path.insert(0, str(shim))
    return shim


# --------------------------------------------------------------------------------------------
# device


def device_facts() -> dict[str, Any]:
    """The GPU (if torch sees one) in one line, and torch's versions."""
    import torch
    import torchvision

    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if not torch.cuda.is_available():
        return {
            "gpu": False,
            "device": f"no CUDA GPU (torch.cuda.is_available() is False); {versions}",
            "device_short": "no GPU",
        }
    props = torch.cuda.get_device_properties(0)
    driver = ""
    smi = shutil.which("nvidia-smi")
    if smi:
        q = (
            subprocess.run(
                [
                    smi,
                    "--query-gpu=driver_version,clocks.max.sm,power.limit",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.strip()
            .splitlines()
        )
        driver = f", driver/max SM clock/power limit {q[0]}" if q else ""
    # torch's defaults: TF32 in cuDNN convolutions, not in matmuls
    tf32 = f"TF32 conv {torch.backends.cudnn.allow_tf32}, "
    tf32 += f"matmul {torch.backends.cuda.matmul.allow_tf32}"
    line = (
        f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
        f"{driver}; CUDA {torch.version.cuda} (torch), {versions}; {tf32}"
    )
    return {"gpu": True, "device": line, "device_short": props.name}


# --------------------------------------------------------------------------------------------
# parts


def part_tests(
    root: Path, out: Path, env: dict[str, str], timeout: float, gpu: bool
) -> dict[str, Any]:
    """tests/test_plugin_cuda.py through pytest (a child process), counted from its JUnit XML."""
    xml = out / "kernel_tests.xml"
    site = ["-S"] if sys.flags.no_site else []  # as this interpreter was started
    cmd = [
        sys.executable,
        *site,
        "-m",
        "pytest",
        "tests/test_plugin_cuda.py",
        "-m",
        "cuda",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
    ]
    try:
        done = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = None
    (out / "kernel_tests.log").write_text(text)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    skip_reasons: set[str] = set()
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = case.get("name", "?")
            if case.find("failure") is not None or case.find("error") is not None:
                bad = case.find("failure")
                kind = "failed" if bad is not None else "errors"
                bad = bad if bad is not None else case.find("error")
                counts[kind] += 1
                msg = (bad.get("message", "") if bad is not None else "").splitlines()
                failures.append(f"{name}: {msg[0][:200] if msg else ''}")
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
                skipped = case.find("skipped")
                skip_reasons.add((skipped.get("message", "") if skipped is not None else "")[:120])
            else:
                counts["passed"] += 1
    result: dict[str, Any] = {"command": " ".join(cmd[1:]), "counts": counts, "failures": failures}
    total = sum(counts.values())
    if rc is None:
        return result | {"status": "failed", "reason": f"pytest ran past {timeout:.0f} s"}
    if rc not in (0, 5) or counts["failed"] or counts["errors"]:
        tail = text.strip().splitlines()[-1:] or [""]
        return result | {"status": "failed", "reason": f"pytest exit {rc}: {tail[0][:200]}"}
    if not gpu:
        why = "; ".join(sorted(skip_reasons)) or "nothing collected"
        return result | {
            "status": "skipped",
            "reason": f"no CUDA GPU: pytest skipped {counts['skipped']} of {total} ({why})",
        }
    if counts["passed"] == 0:
        why = "; ".join(sorted(skip_reasons)) or "nothing collected"
        return result | {"status": "failed", "reason": f"GPU present but no test ran ({why})"}
    return result | {
        "status": "ok",
        "reason": f"{counts['passed']} passed, {counts['skipped']} skipped",
    }


Add = Callable[[dict[str, Any]], None]  # a part hands each row over as soon as it has it


def rows_status(rows: int, errors: list[str], what: str) -> dict[str, Any]:
    """A part's status from its rows and the units that raised (each unit runs alone, so that
    an fp16 failure keeps the fp32 figures)."""
    if errors:
        return {"status": "failed", "reason": f"{len(errors)} failed: {errors[0]}"[:400],
                "errors": errors}  # fmt: skip
    return {"status": "ok", "reason": f"{rows} rows; {what}"}


def guarded(errors: list[str], what: str, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)``; an exception is printed and noted in ``errors``, not raised."""
    try:
        fn(*args)
    except Exception as e:
        traceback.print_exc()
        errors.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")


def part_kernel(hw: tuple[int, int], reps: int, add: Add) -> dict[str, Any]:
    """bench_roialign's CUDA comparison on the box and the mask pooler's workloads."""
    import bench_roialign

    from maskrt.plugins import MultiLevelRoIAlignFields

    workloads = (("box 1000 RoIs 7x7", 1000, 7), ("mask 100 RoIs 14x14", 100, 14))
    errors: list[str] = []
    met: list[bool] = []

    def one(label: str, num_rois: int, size: int) -> None:
        feats, rois = bench_roialign.make_inputs(num_rois, 256, hw)
        fields = MultiLevelRoIAlignFields(size, 2, 0, bench_roialign.SCALES)
        got = bench_roialign.bench_cuda(feats, rois, fields, hw, reps)
        for tv, ours in zip(got[0::2], got[1::2]):
            goal = GOALS[ours.dtype]
            met.append(ours.ratio_vs_torchvision >= goal)
            add({
                "workload": label, "dtype": ours.dtype, "torchvision_ms": tv.median_ms,
                "maskrt_ms": ours.median_ms, "ratio": ours.ratio_vs_torchvision, "goal": goal,
                "met": met[-1], "max_abs_diff": ours.max_abs_diff,
                "maskrt_gbytes_per_s": ours.gbytes_per_s,
            })  # fmt: skip

    for label, num_rois, size in workloads:
        guarded(errors, label, one, label, num_rois, size)
    return rows_status(len(met), errors, f"goal met in {sum(met)} of {len(met)}")


def part_deploy(
    device: str, hw: tuple[int, int], dtypes: Sequence[str], reps: int, warmup: int, add: Add
) -> dict[str, Any]:
    """bench_deploy_torch's three-way comparison at batch 1 (maskrcnn_resnet50_fpn)."""
    from dataclasses import asdict

    import bench_deploy_torch

    errors: list[str] = []
    count = 0

    def one(dtype: str) -> None:
        nonlocal count
        rows = bench_deploy_torch.bench_dtype(device, dtype, 1, hw, reps, warmup)
        for r in rows:
            add(asdict(r))
        count += len(rows)
        if len(rows) < 3:  # bench_dtype reports a failing variant on stderr and goes on
            errors.append(f"{dtype}: {3 - len(rows)} of 3 variants failed (see the output)")

    for dtype in dtypes:
        guarded(errors, dtype, one, dtype)
    return rows_status(count, errors, "torchvision, deploy/reference, deploy/maskrt")


def pipeline_once(
    images: Sequence[Any], spec: Any, deploy: Any, device: str, dtype: Any
) -> tuple[dict[str, float], list[Any]]:
    """One batch through maskrt's runtime around the deploy model: ms per stage, detections.

    Each device stage ends with a synchronisation, so that every stage is timed alone."""
    import numpy as np
    import torch

    from maskrt.contract import output_names
    from maskrt.runtime.postprocess import postprocess
    from maskrt.runtime.preprocess import preprocess

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    ms: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        ms[name] = 1000.0 * (now - t)
        t = now

    batch = preprocess(images, spec)  # numpy: resize + pad, float32 [B, 3, H, W]
    lap("pre")
    x = torch.from_numpy(batch.images).to(device)  # from pageable memory, as the runtime does
    sizes = torch.from_numpy(batch.image_sizes).to(device)
    sync()
    lap("h2d")
    with torch.inference_mode():
        outs = deploy(x.to(dtype), sizes)
    sync()
    lap("infer")
    host = [o.cpu().numpy() for o in outs]
    lap("d2h")
    names = output_names(deploy.has_masks, deploy.has_keypoints)
    named = {n: (a.astype(np.float32) if a.dtype == np.float16 else a) for n, a in zip(names, host)}
    dets = postprocess(named, batch)  # boxes to original pixels, masks pasted
    lap("post")
    return ms, dets


def part_stages(
    device: str,
    arch: str,
    hw: tuple[int, int],
    batches: Sequence[int],
    dtypes: Sequence[str],
    reps: int,
    warmup: int,
    add: Add,
) -> dict[str, Any]:
    """Per dtype and batch: each stage's median/p90 over ``reps`` runs of the whole pipeline;
    for fp32, whether the detections equal torchvision's (validate's matching rule)."""
    import torch
    from bench_deploy_torch import DTYPES, maskrt_roi_align

    from maskrt.detections import same_detections
    from maskrt.export import DeployModel
    from maskrt.pipeline.bench import bench_images
    from maskrt.runtime.backends.torch_backend import TorchPredictor
    from maskrt.specs import build_model, default_spec

    spec = default_spec(arch, box_score_thresh=0.0, min_size=hw[0], max_size=hw[1])
    images = bench_images(None, f"{hw[0]}x{hw[1]}", max(batches))
    errors: list[str] = []
    count = 0

    def one(dtype_name: str) -> None:
        nonlocal count
        dtype = DTYPES[dtype_name]
        torch.manual_seed(0)
        model = build_model(spec)
        deploy = DeployModel(model, roi_align=maskrt_roi_align(device))
        deploy = deploy.to(device=device, dtype=dtype).eval()
        for b in batches:
            chunk = images[:b]
            times: dict[str, list[float]] = {s: [] for s in STAGES}
            totals = []
            dets: list[Any] = []
            for i in range(warmup + reps):
                ms, dets = pipeline_once(chunk, spec, deploy, device, dtype)
                if i >= warmup:
                    for s in STAGES:
                        times[s].append(ms[s])
                    totals.append(sum(ms.values()))
            row: dict[str, Any] = {"device": device, "dtype": dtype_name, "batch": b}
            row |= {s: summary_stats(times[s]) for s in STAGES}
            row["total_median_ms"] = statistics.median(totals)
            row["images_per_s"] = 1000.0 * b / row["total_median_ms"]
            host = sum(row[s]["median_ms"] for s in ("pre", "post"))
            row["host_share"] = host / sum(row[s]["median_ms"] for s in STAGES)
            row["detections"] = [len(d) for d in dets]
            if dtype_name == "fp32":  # torchvision's own model on the same images: the oracle
                ref = TorchPredictor(spec, model, device).predict(chunk)
                same = sum(1 for a, r in zip(dets, ref) if same_detections(a, r))
                row["same_detections"] = f"{same}/{b}"
            add(row)
            count += 1
            print(
                f"stages {device} {dtype_name} batch {b}: "
                + ", ".join(f"{s} {row[s]['median_ms']:.1f}" for s in STAGES)
                + " ms",
                flush=True,
            )

    for dtype_name in dtypes:
        guarded(errors, dtype_name, one, dtype_name)
    what = (
        f"{arch} (random weights, box_score_thresh 0: up to "
        f"{spec.box_detections_per_img} detections per image, all masks pasted), "
        f"{len(images)} synthetic images scaled to {hw[0]}x{hw[1]}"
    )
    return rows_status(count, errors, "stage times") | {"what": what}


# --------------------------------------------------------------------------------------------
# main


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: $OUT where set, else build/gpu-report)",
    )
    p.add_argument("--force", action="store_true", help="overwrite a report already in --out")
    p.add_argument(
        "--build-dir",
        type=Path,
        default=ROOT / "build" / "gpu-lib",
        help="the native libraries (carried to the GPU machine)",
    )
    p.add_argument("--build-only", action="store_true", help="only the build part (CPU machine)")
    p.add_argument("--rebuild", action="store_true", help="build even where a build fits")
    p.add_argument(
        "--cuda-arch",
        default="90",
        help="CMAKE_CUDA_ARCHITECTURES (90: H100/H200), or none: CPU library only",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument(
        "--device",
        choices=["auto", "cpu"],
        default="auto",
        help="cpu: run the stage/deploy code on the CPU (a check, not figures)",
    )
    p.add_argument("--arch", default="maskrcnn_resnet50_fpn", help="model of the stages part")
    p.add_argument("--size", default="800x1344", help="network input HxW (multiples of 32)")
    p.add_argument("--batches", default="1,4", help="batch sizes of the stages part")
    p.add_argument("--dtypes", default="fp32,fp16", help="fp32, fp16 or both")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--quick", action="store_true", help="5 repetitions (kernel: 20)")
    p.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds; parts that would not fit are skipped, the run ends at it",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        parts = ["build"] if args.build_only else parse_list(args.parts, PARTS, "--parts")
        hw = parse_size(args.size)
        batches = parse_batches(args.batches)
        dtypes = parse_list(args.dtypes, ("fp32", "fp16"), "--dtypes")
        if args.budget <= 0 or (args.reps is not None and args.reps < 1) or args.warmup < 0:
            raise UsageError("--budget and --reps must be positive, --warmup not negative")
        if args.cuda_arch != "none" and not all(
            a.isdigit() or a.endswith(("-real", "-virtual")) for a in args.cuda_arch.split(";")
        ):
            raise UsageError(
                f"--cuda-arch wants e.g. 90 or '80;90' or none, got {args.cuda_arch!r}"
            )
        out = args.out or Path(os.environ.get("OUT") or ROOT / "build" / "gpu-report")
        if (out / REPORT_JSON).exists() and not args.force:
            raise UsageError(f"{out / REPORT_JSON} exists; pass --force to overwrite it")
        out.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as e:
        print(f"gpu_run: error: {e}", file=sys.stderr)
        return 2
    reps = args.reps or (5 if args.quick else 20)
    kernel_reps = args.reps or (20 if args.quick else 50)
    warmup = args.warmup

    command = "python3 benchmarks/gpu_run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = Report(
        out,
        {
            "title": "maskrt GPU run",
            "command": command.strip(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": "not read yet",
            "device_short": "?",
            "machine": "",
            "commit": "",
            "budget_s": args.budget,
            "parts": {p: {"status": "not run"} for p in parts},
            "_t0": t0,
        },
    )
    deadline = t0 + args.budget

    def watchdog() -> None:
        with report.lock:
            name = report.current or "between parts"
            if report.current:
                report.data["parts"][report.current].update(
                    status="stopped", reason=f"the budget of {args.budget:.0f} s ran out here"
                )
            report.write()
        print(
            f"gpu_run: budget of {args.budget:.0f} s ran out in {name}; report in {out}", flush=True
        )
        os._exit(1)

    timer = threading.Timer(args.budget, watchdog)
    timer.daemon = True
    timer.start()

    def run_part(name: str, fn: Callable[[Add], dict[str, Any]]) -> None:
        if name not in parts:
            return
        left = deadline - time.monotonic()
        if left < PART_SECONDS[name] * (0.5 if args.quick else 1.0):
            report.set_part(
                name,
                status="skipped",
                reason=f"{left:.0f} s of the budget left, the part needs ~{PART_SECONDS[name]} s",
            )
            print(f"{name}: skipped (budget)", flush=True)
            return
        report.current = name
        start = time.monotonic()
        print(f"{name}: running", flush=True)
        report.set_part(name, status="running")

        def add(row: dict[str, Any]) -> None:
            with report.lock:
                report.data["parts"][name].setdefault("rows", []).append(row)
                report.write()

        try:
            result = fn(add)
        except Exception as e:  # reported, then the next part runs
            with open(out / "errors.log", "a") as log:  # one file: the device returns 8 at most
                log.write(f"== {name}\n{traceback.format_exc()}\n")
            result = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        result["seconds"] = round(time.monotonic() - start, 1)
        report.current = None
        report.set_part(name, **result)
        print(
            f"{name}: {result['status']} ({result['seconds']} s) {result.get('reason', '')}",
            flush=True,
        )

    # build: the libraries every other part loads
    build_log = out / "build.log"
    lib_dir = args.build_dir.resolve()

    def build(_add: Add) -> dict[str, Any]:
        ok, why = reuse_reason(ROOT, lib_dir, args.cuda_arch)
        if ok and not args.rebuild:
            refresh_checkout_state(ROOT, lib_dir)
            return {"status": "ok", "reason": why, "reused": True, "mib": dir_mib(lib_dir)}
        print(f"build: building ({'--rebuild' if ok else why})", flush=True)
        info = cmake_build(ROOT, lib_dir, args.cuda_arch, build_log)
        note = "" if info["cuda"] == "yes" or args.cuda_arch == "none" else "; NO CUDA library"
        return {
            "status": "ok",
            "reused": False,
            "mib": round(dir_mib(lib_dir), 2),
            "reason": f"built into {lib_dir.name} for arch {args.cuda_arch} "
            f"({info['nvcc'] or 'no nvcc'}){note}",
        }

    run_part("build", build)
    info = read_build_info(lib_dir)
    report.data["commit"] = commit_line(ROOT, info)
    if args.build_only:
        report.write()
        timer.cancel()
        status = report.data["parts"]["build"]["status"]
        print(
            f"build: {lib_dir} ({dir_mib(lib_dir) if lib_dir.is_dir() else 0:.1f} MiB); "
            f"carry it as {os.path.relpath(lib_dir, ROOT)}",
            flush=True,
        )
        return 0 if status == "ok" else 1

    # everything below imports maskrt (from this checkout) and torch
    os.environ["MASKRT_PLUGIN_DIR"] = str(lib_dir)
    shim = import_shim(ROOT, ROOT / "build" / "gpu-shim")
    env = dict(os.environ)
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
        # `python -m pytest` would put the working directory first on sys.path, where the
        # repository's own maskrt/ (without its subpackages) hides the shim's (Python >= 3.11)
        env["PYTHONSAFEPATH"] = "1"
    sys.path.insert(0, str(BENCHMARKS))
    from maskrt.machine import machine_facts, machine_line
    from maskrt.plugins import _library

    facts = device_facts()
    mf = machine_facts()
    mf["commit"] = report.data["commit"]
    report.data |= {
        "device": facts["device"],
        "device_short": facts["device_short"],
        "machine": machine_line(mf).removeprefix("Machine: "),
    }
    found = {n: _library.find(n) for n in (_library.CPU, _library.CUDA)}
    report.data["libraries"] = ", ".join(f"{n}: {p or 'not found'}" for n, p in found.items())
    report.write()
    print(f"Machine: {report.data['machine']}", flush=True)
    print(f"device: {facts['device']}", flush=True)
    gpu = bool(facts["gpu"])
    cuda_lib = found[_library.CUDA] is not None
    stage_device = "cpu" if args.device == "cpu" else "cuda"

    def need_gpu(name: str) -> bool:
        """Whether a GPU part can run; if not, the part says why."""
        if name not in parts:
            return False
        if not gpu:
            report.set_part(name, status="skipped", reason="no CUDA GPU")
            print(f"{name}: skipped: no CUDA GPU (torch.cuda.is_available() is False)", flush=True)
            return False
        if not cuda_lib:
            report.set_part(name, status="failed", reason="CUDA library not built (see build)")
            print(f"{name}: failed: GPU present but the CUDA library was not built", flush=True)
            return False
        return True

    timeout = max(10.0, min(PART_SECONDS["tests"] * 3, deadline - time.monotonic() - 5))
    run_part("tests", lambda _add: part_tests(ROOT, out, env, timeout, gpu))
    if need_gpu("kernel"):
        run_part("kernel", lambda add: part_kernel(hw, kernel_reps, add))
    if stage_device == "cpu" or need_gpu("deploy"):
        deploy_reps = max(5, reps // 2) if stage_device == "cuda" else reps
        run_part(
            "deploy",
            lambda add: part_deploy(stage_device, hw, dtypes, deploy_reps, warmup, add),
        )
    if stage_device == "cpu" or need_gpu("stages"):
        run_part(
            "stages",
            lambda add: part_stages(
                stage_device, args.arch, hw, batches, dtypes, reps, warmup, add
            ),
        )
    timer.cancel()
    report.write()
    print_summary(report.data)
    statuses = [p.get("status") for p in report.data["parts"].values()]
    return 1 if any(s in ("failed", "stopped") for s in statuses) else 0


def print_summary(r: dict[str, Any]) -> None:
    """The last lines of the output (what the device tool's reply carries)."""
    print(f"\n== maskrt GPU run: {r['device']}")
    print(f"== commit {r['commit']}; {r['elapsed_s']} s; report {REPORT_MD} / {REPORT_JSON}")
    for name, p in r["parts"].items():
        print(f"{name:<7} {p.get('status', 'not run'):<8} {p.get('reason', '')}")
    for k in r["parts"].get("kernel", {}).get("rows", []):
        print(
            f"kernel  {k['workload']:<20} {k['dtype']} tv {k['torchvision_ms']:.3f} ms, maskrt "
            f"{k['maskrt_ms']:.3f} ms: {k['ratio']:.2f}x (goal {k['goal']:g}x "
            f"{'met' if k['met'] else 'NOT met'}), max diff {k['max_abs_diff']:.1e}"
        )
    for s in r["parts"].get("stages", {}).get("rows", []):
        print(
            f"stages  {s['device']} {s['dtype']} b{s['batch']}: "
            + " ".join(f"{st} {s[st]['median_ms']:.1f}" for st in STAGES)
            + f" = {s['total_median_ms']:.1f} ms, host {100 * s['host_share']:.0f} %, "
            f"same {s.get('same_detections', '-')}"
        )


if __name__ == "__main__":
    sys.exit(main())
