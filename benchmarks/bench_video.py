"""Video throughput of `maskrt infer`: the threaded pipeline vs the plain per-frame loop, and the
time of each stage, on the shipped demo model in ONNX Runtime (CPU, `maskrt infer`'s default
thread settings).

    python benchmarks/bench_video.py [--frames 150] [--size 360x640] [--batch-size 1]
                                     [--onnx demo.onnx] [--json OUT]

The source is made here: moving shapes from the shapes generator scaled to ``--size``, H.264
4:2:0 (x264 ultrafast) in Matroska. Rows, each on the same video:

* ``infer alone``: ``Predictor.predict`` on the already-decoded frames, ``--batch-size`` at a
  time (preprocess + ONNX Runtime + postprocess; no decoding, drawing or encoding): the
  pipeline's goal is to come within 10 % of this.
* ``plain loop``: ``infer_video(pipeline=False)``: decode, predict, draw, write JSON Lines and
  encode, one batch after the other in one thread.
* ``pipeline``: ``infer_video(pipeline=True)``, what ``maskrt infer`` runs.

Per-stage seconds are the time each stage spent working, summed over the run (stages overlap in
the pipeline, so they add up to more than its wall time). Nothing here is a test; the figures go
to BENCHMARKS.md with the machine line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    from _video_media import moving_shapes
    from PIL import Image

    small = moving_shapes(n)
    h, w = size
    return [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in small]


def _export(path: Path) -> Path:
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export.exporter import export_onnx
    from maskrt.training.shipped import shipped_demo_checkpoint

    spec, model = load_checkpoint(shipped_demo_checkpoint())
    export_onnx(model, path, spec=spec, progress=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", default="360x640", help="HxW of the video's frames")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--onnx", type=Path, default=None, help="default: export the demo here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))

    from _video_media import write_video

    from maskrt.machine import machine_facts, machine_line
    from maskrt.runtime.predictor import load_predictor
    from maskrt.runtime.video import open_video
    from maskrt.runtime.videoout import infer_video

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        onnx_path = args.onnx or _export(tmp / "demo.onnx")
        frames = _frames(args.frames, (h, w))
        src = tmp / "src.mkv"
        write_video(str(src), frames, lossless=False)
        with load_predictor(onnx_path) as predictor:
            predictor.predict(frames[:1])  # warm-up: ORT's first run allocates
            start = time.perf_counter()
            for i in range(0, len(frames), args.batch_size):
                predictor.predict(frames[i : i + args.batch_size])
            alone = time.perf_counter() - start
            rows.append({"run": "infer alone", "seconds": alone, "stages": {}})
            for name, pipeline in (("plain loop", False), ("pipeline", True)):
                out = tmp / name.replace(" ", "_")
                start = time.perf_counter()
                result = infer_video(
                    predictor, open_video(str(src)), out / "v.mp4", out / "v.jsonl",
                    batch_size=args.batch_size, pipeline=pipeline,
                )  # fmt: skip
                wall = time.perf_counter() - start
                assert result.frames_written == len(frames), result
                rows.append({"run": name, "seconds": wall, "stages": result.seconds})
    n = len(frames)
    print(machine_line(machine_facts()))
    print(f"{n} frames {w}x{h}, batch {args.batch_size}, demo model, ONNX Runtime CPU defaults")
    print(f"{'run':<12} {'frames/s':>9} {'ms/frame':>9}  stage ms/frame")
    for row in rows:
        stages = ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in row["stages"].items())
        print(f"{row['run']:<12} {n / row['seconds']:>9.2f} {1000 * row['seconds'] / n:>9.1f}  "
              f"{stages}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"frames": n, "size": [h, w], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
