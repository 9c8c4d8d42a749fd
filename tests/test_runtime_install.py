"""The runtime installs and runs without torch, as on a Jetson: a fresh virtual environment gets
``pip install "maskrt[cpu]"`` (the base install plus CPU inference: no torch, no torchvision),
then runs ``maskrt infer`` and ``maskrt eval`` on a deploy graph the full install exported. The
oracle is the full install running the same commands on the same files: the answers must be the
same, and torch must never have been imported in the fresh environment.

The fresh environment takes the same onnx/onnxruntime/numpy versions as this one (so that the
two runs compute the same bits) and builds maskrt's CPU library only (the CUDA one is not what
this test is about and costs a minute to compile). ~1.5 minutes, most of it pip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

from maskrt.coco import split_paths

ROOT = Path(__file__).resolve().parents[1]

# Runs the maskrt command line and says at exit which heavy libraries were loaded.
RUNNER = """
import json, sys

from maskrt.pipeline.main import main
try:
    main(sys.argv[1:])
finally:
    heavy = ("torch", "torchvision", "onnx", "onnxruntime", "onnx_graphsurgeon")
    loaded = sorted(m for m in heavy if m in sys.modules)
    print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding ``maskrt[cpu]`` and nothing of the export side."""
    root = tmp_path_factory.mktemp("runtime-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version(name)}" for name in
            ("numpy", "onnx", "onnxruntime", "onnxruntime-extensions")]  # fmt: skip
    install = subprocess.run(
        [
            str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[cpu]", *pins,
            "-C", "cmake.define.MASKRT_WITH_CUDA=OFF",
            "-C", "cmake.define.MASKRT_WITH_TENSORRT=OFF",
            "-C", f"build-dir={root / 'build'}",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return venv


def _maskrt(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``maskrt ARGS`` under ``python``, run outside the checkout (whose ``maskrt/`` folder would
    otherwise shadow the installed package)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(python), "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=600,
    )


@pytest.mark.slow
def test_runtime_install_runs_without_torch(
    runtime_venv: Path, demo_checkpoint: Path, heldout_dataset: Path, tmp_path: Path
) -> None:
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export import export_onnx

    python = runtime_venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'), "
         "u.find_spec('torchvision'), u.find_spec('onnx_graphsurgeon'))"],
        capture_output=True, text=True, check=True, cwd=runtime_venv,
    )  # fmt: skip
    assert probe.stdout.split() == ["None", "None", "None"], probe.stdout

    graph = tmp_path / "model.onnx"
    spec, model = load_checkpoint(demo_checkpoint)
    export_onnx(model, graph, spec=spec, compact_heads=True, progress=False)
    image_dir, _ = split_paths(heldout_dataset, "val")
    images = [str(p) for p in sorted(image_dir.glob("*.png"))[:4]]

    answers = {}
    for side, interpreter in (("runtime", python), ("full", Path(sys.executable))):
        out = tmp_path / side
        infer = _maskrt(interpreter, "infer", str(graph), *images, "-o", str(out), "--no-progress")
        assert infer.returncode == 0, infer.stderr[-3000:]
        evaluate = _maskrt(interpreter, "eval", str(graph), "--data", str(heldout_dataset),
                           "--limit", "8")  # fmt: skip
        assert evaluate.returncode == 0, evaluate.stderr[-3000:]
        if side == "runtime":
            for run in (infer, evaluate):
                assert 'LOADED ["onnx", "onnxruntime"]' in run.stderr, run.stderr[-2000:]
        answers[side] = (
            json.loads((out / "detections.json").read_text()),
            evaluate.stdout,  # detection count and the AP table
        )
    assert answers["runtime"][0], "no detections on the held-out images"
    assert answers["runtime"] == answers["full"]

    # the installed package (not the checkout) carries the demo model, and it passes its hash check
    shipped = subprocess.run(
        [str(python), "-c", "from maskrt.training.shipped import shipped_demo_checkpoint as s; "
         "print(s())"],
        capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    assert str(ROOT) not in shipped.stdout and "site-packages" in shipped.stdout, shipped.stdout

    # `maskrt --help` needs nothing beyond the base install: it loads none of the extras
    helped = _maskrt(python, "--help")
    assert helped.returncode == 0 and "LOADED []" in helped.stderr, helped.stderr[-2000:]

    # the export side says which extra it needs, in one line
    refused = _maskrt(python, "export", str(demo_checkpoint), "-o", str(tmp_path / "x.onnx"))
    assert refused.returncode == 1
    error = [ln for ln in refused.stderr.splitlines() if not ln.startswith("LOADED")]
    assert error == [
        'Error: maskrt export needs torch, which is not installed: pip install "maskrt[export]"'
    ]

    # so does a video source without PyAV (the video extra), before writing anything
    clip = tmp_path / "clip.mkv"
    clip.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(64))  # never opened: PyAV is missing
    video = _maskrt(python, "infer", str(graph), str(clip), "-o", str(tmp_path / "v"))
    assert video.returncode == 1
    error = [ln for ln in video.stderr.splitlines() if not ln.startswith("LOADED")]
    assert error == ['Error: video input needs the video extra: pip install "maskrt[video]"']
    assert not (tmp_path / "v").exists()
