"""The scripts in benchmarks/ run and check their own results against torchvision (tiny sizes).

Smoke runs only: the figures go to BENCHMARKS.md, never into an assertion.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _roialign_cases import FP32_TOL

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_roialign_benchmark_matches_torchvision(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = _run("bench_roialign.py", "--quick", "--rois", "40", "--channels", "8",
             "--height", "128", "--width", "192", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "cpu fp32: max abs difference to torchvision" in r.stderr
    err = float(r.stderr.split("max abs difference to torchvision")[1].split()[0])
    assert err <= FP32_TOL
    rows = json.loads(out.read_text())["rows"]
    assert {(row["device"], row["impl"]) for row in rows} >= {
        ("cpu", "torchvision"),
        ("cpu", "maskrt"),
    }


def test_deploy_model_benchmark_matches_torchvision(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = _run("bench_deploy_torch.py", "--device", "cpu", "--size", "256x384",
             "--reps", "1", "--warmup", "0", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {row["impl"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"torchvision", "deploy/reference", "deploy/maskrt"}, r.stderr
    for name in ("deploy/reference", "deploy/maskrt"):
        # Same scores as torchvision, sorted (boxes of tied scores may come in another order).
        # measured 0 (the same torch kernels), ORT 1.31.1 and 1.32.0; 1e-4 as SCORE_TOL in
        # test_export
        assert rows[name]["max_score_diff"] <= 1e-4, rows[name]


def test_memory_benchmark_runs_each_configuration_alone(
    demo_checkpoint: Path, shapes_dataset: Path
) -> None:
    """One fresh `maskrt infer` per configuration: the ONNX Runtime one loads no torch."""
    r = _run("bench_memory.py", str(demo_checkpoint), str(shapes_dataset / "val"), "--count", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): ln.split("|")[3].strip() for ln in r.stdout.splitlines()
            if ln.startswith("| ") and "MiB" not in ln}  # fmt: skip
    assert rows == {"torchvision eager": "True", "onnxruntime, full install": "False"}


def test_preprocess_benchmark_agrees_with_torchvision(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = _run("bench_preprocess.py", "--sizes", "90x120,200x150", "--reps", "10",
             "--min-size", "128", "--max-size", "224", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["resized"] for row in rows] == [[128, 170], [170, 128]]
    # runtime/README.md: within 1e-4 of torchvision's normalise + resize
    assert all(row["max_abs_diff"] <= 1e-4 for row in rows), rows


def test_stage_benchmark_covers_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = _run("bench_stages.py", "--arch", "demo_maskrcnn_v2", "--size", "128x160", "--batch", "2",
             "--num-images", "4", "--detections", "5", "--reps", "1",
             "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    rows = {row["stage"]: row for row in report["rows"]}
    for stage in ("backbone", "rpn head", "RoIAlign", "box head", "mask head"):
        assert rows[stage]["torchvision_ms"] > 0 and rows[stage]["onnxruntime_ms"] > 0, stage
    computed = ("backbone", "rpn head", "box head", "mask head")  # the FLOP-counted stages
    peak = report["peak_gflops"]
    for stage in computed:
        row = rows[stage]
        assert row["gflop"] > 0 and row["floor_ms"] == pytest.approx(1000 * row["gflop"] / peak)
    # every bound is the sum of its stages' floors
    flops_only = sum(rows[s]["floor_ms"] for s in computed)
    assert report["bound_flops_only_ms"] == pytest.approx(flops_only)
    assert report["bound_roialign_rest_free_ms"] == pytest.approx(
        flops_only + rows["RoIAlign"]["onnxruntime_ms"]
    )
    assert report["bound_standard_ops_ms"] == pytest.approx(
        sum(row["floor_ms"] for row in rows.values())
    )
    # RoIs x 64 channels x 7 x 7 (box) or 14 x 14 (mask) bins x 2 x 2 samples each
    assert report["roialign_samples"] > 0 and report["roialign_samples"] % (64 * 49 * 4) == 0


def test_detection_differences_explains_each_image() -> None:
    r = _run("detection_differences.py", "--arch", "demo_maskrcnn_v2", "--size", "128x160",
             "--num-images", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("image 0: "))
    # the deploy graph finds torchvision's objects, paired one to one within a fraction of a px
    assert "validate's rule: True" in line, line
    assert float(line.split("pairs differ by <= ")[1].split()[0]) < 0.5, line


STAGES = ("pre", "h2d", "infer", "d2h", "post")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run where the GPU parts skip")
def test_gpu_run_on_the_cpu_builds_skips_the_gpu_parts_and_reports(tmp_path: Path) -> None:
    """gpu_run.py's CPU side: the build step (CPU library only, to stay fast), the kernel tests
    collected through that build and skipped, the GPU parts saying they are skipped, the stage
    code run on the CPU and checked against torchvision's own model, the report; then the
    build reused, and bad input refused in one line."""
    lib, out = tmp_path / "lib", tmp_path / "report"
    common = ["--build-dir", str(lib), "--cuda-arch", "none"]
    r = _run("gpu_run.py", "--out", str(out), *common, "--device", "cpu",
             "--parts", "build,tests,kernel,stages", "--arch", "demo_maskrcnn_v2",
             "--size", "128x160", "--batches", "1,2", "--dtypes", "fp32",
             "--reps", "1", "--warmup", "0")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernel: skipped: no CUDA GPU" in r.stdout
    report = json.loads((out / "gpu_report.json").read_text())
    parts = report["parts"]
    assert parts["build"]["status"] == "ok" and parts["build"]["reused"] is False
    info = json.loads((lib / "build_info.json").read_text())
    assert info["cuda"] == "no" and (lib / "libmaskrt_roialign_cpu.so").is_file()
    tests = parts["tests"]
    assert tests["status"] == "skipped", tests
    assert tests["counts"]["skipped"] >= 1 and tests["counts"]["errors"] == 0, tests
    rows = parts["stages"]["rows"]
    assert [row["batch"] for row in rows] == [1, 2]
    for row in rows:
        assert all(row[s]["median_ms"] > 0 for s in STAGES), row
        # one repetition: the total is the sum of its stages
        assert row["total_median_ms"] == pytest.approx(sum(row[s]["median_ms"] for s in STAGES))
        assert len(row["detections"]) == row["batch"] and min(row["detections"]) > 0
        # maskrt's runtime around the deploy model finds what torchvision's model finds
        assert row["same_detections"] == f"{row['batch']}/{row['batch']}", row
    md = (out / "gpu_report.md").read_text()
    assert report["device"] in md and report["commit"] in md and "gpu_run.py --out" in md
    assert "| cpu | fp32 | 2 |" in md

    r = _run("gpu_run.py", "--out", str(out), "--force", *common,
             "--parts", "build,kernel,deploy,stages")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    parts = json.loads((out / "gpu_report.json").read_text())["parts"]
    assert parts["build"]["reused"] is True, parts["build"]
    for name in ("kernel", "deploy", "stages"):
        assert parts[name]["status"] == "skipped" and f"{name}: skipped: no CUDA GPU" in r.stdout

    r = _run("gpu_run.py", "--out", str(out), *common, "--parts", "build")
    assert r.returncode == 2 and "pass --force" in r.stderr and "Traceback" not in r.stderr
    r = _run("gpu_run.py", "--out", str(tmp_path / "other"), "--size", "100x100")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--size" in r.stderr
    assert not (tmp_path / "other").exists()


def test_readme_gpu_commands_match_the_script() -> None:
    """README's "On a GPU" calls: the options parse, the carried folder is the one the build
    step writes, and the device call's time limit leaves the script's budget room to end."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_run

    text = (BENCHMARKS.parent / "README.md").read_text()
    section = text.split("## On a GPU", 1)[1].split("\n## ", 1)[0]
    build = re.search(r"^python benchmarks/gpu_run\.py ([^#\n]*)", section, re.M)
    call = re.search(r'run\(command="([^"]+)",\s*carry=\[([^\]]*)\], timeout_s=(\d+)\)', section)
    assert build and call, section
    built = gpu_run.make_parser().parse_args(shlex.split(build.group(1)))
    assert built.build_only
    words = shlex.split(call.group(1))
    script = words.index("benchmarks/gpu_run.py")
    assert words[script - 1] == "python3"  # the GPU machine's interpreter with torch
    args = gpu_run.make_parser().parse_args(words[script + 1 :])
    carried = [c.strip().strip('"') for c in call.group(2).split(",")]
    assert carried == [str(built.build_dir.relative_to(BENCHMARKS.parent))]
    assert args.build_dir == built.build_dir
    assert args.budget + 30 <= int(call.group(3)) <= 600  # the device tool's longest command


def test_video_benchmark_runs(tmp_path: Path) -> None:
    """bench_video.py end to end on a few small frames: every run wrote every frame (the
    script checks), with the stages it names."""
    pytest.importorskip("av")
    out = tmp_path / "video.json"
    r = _run("bench_video.py", "--frames", "4", "--size", "64x96", "--batch-size", "2",
             "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["run"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["infer alone", "plain loop", "pipeline"]
    for run in ("plain loop", "pipeline"):
        assert set(rows[run]["stages"]) == {"decode", "preprocess", "infer", "postprocess",
                                            "write"}  # fmt: skip
