"""Peak resident memory of `maskrt infer`, one fresh process per configuration.

    python benchmarks/bench_memory.py CHECKPOINT IMAGE_DIR [--count 16] [--runtime-python PY]

Configurations (each a fresh ``maskrt infer`` process over the same images):

* ``torchvision eager``: the checkpoint itself (torch backend);
* ``onnxruntime, full install``: the compact-heads deploy graph exported from it;
* ``onnxruntime, runtime install``: the same graph under ``--runtime-python``, the interpreter of
  an environment with ``pip install "maskrt[cpu]"`` only (no torch), when given.

Peak RSS is the process's ``VmHWM`` at exit (:func:`maskrt.machine.peak_rss_mib`). Nothing here
is a test; the figures go to BENCHMARKS.md with the machine line printed first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from maskrt.machine import machine_facts, machine_line

# Runs `maskrt ARGS` and reports its peak RSS and whether torch was loaded, on stderr at exit.
RUNNER = """
import atexit, sys
from maskrt.machine import peak_rss_mib
atexit.register(lambda: print(
    f"PEAK {peak_rss_mib():.1f} {'torch' in sys.modules}", file=sys.stderr))
from maskrt.pipeline.main import main
main(sys.argv[1:])
"""


def infer_peak(python: str, artifact: Path, images: list[str], out: Path) -> tuple[float, bool]:
    """(peak RSS in MiB, torch loaded) of one `maskrt infer` run under ``python``."""
    run = subprocess.run(
        [python, "-c", RUNNER, "infer", str(artifact), *images, "-o", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=out.parent,  # not the checkout: its maskrt/ folder would shadow the installed one
    )
    peak = [ln.split() for ln in run.stderr.splitlines() if ln.startswith("PEAK ")]
    if run.returncode != 0 or not peak:
        raise SystemExit(f"maskrt infer failed under {python}:\n{run.stderr[-2000:]}")
    return float(peak[-1][1]), peak[-1][2] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("images", type=Path, help="folder of images (PNG/JPEG)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--runtime-python", help="python of a maskrt[cpu]-only environment")
    args = parser.parse_args()

    from maskrt.checkpoint import load_checkpoint
    from maskrt.export import export_onnx

    images = sorted(str(p) for p in args.images.iterdir() if p.suffix.lower() in
                    (".png", ".jpg", ".jpeg"))[: args.count]  # fmt: skip
    print(machine_line(machine_facts()))
    with tempfile.TemporaryDirectory(prefix="maskrt-memory-") as tmp:
        graph = Path(tmp) / "model.onnx"
        spec, model = load_checkpoint(args.checkpoint)
        export_onnx(model, graph, spec=spec, compact_heads=True, progress=False)
        del model
        runs = [("torchvision eager", sys.executable, args.checkpoint),
                ("onnxruntime, full install", sys.executable, graph)]  # fmt: skip
        if args.runtime_python:
            runs.append(("onnxruntime, runtime install", args.runtime_python, graph))
        print(f"\n`maskrt infer` on {len(images)} images, {spec.arch}\n")
        print("| configuration | peak RSS MiB | torch loaded |\n|---|---|---|")
        reference = None
        for i, (name, python, artifact) in enumerate(runs):
            peak, torch_loaded = infer_peak(python, artifact, images, Path(tmp) / f"out{i}")
            reference = reference or peak
            print(f"| {name} | {peak:.0f} ({100 * peak / reference:.0f} %) | {torch_loaded} |")


if __name__ == "__main__":
    main()
