"""Where inference time goes: torchvision eager stage by stage vs ONNX Runtime's profile of the
deploy graph, grouped into the same stages.

    python benchmarks/bench_stages.py [--arch maskrcnn_resnet50_fpn] [--size 800x1344]
                                      [--detections 100] [--reps 3] [--json OUT]

Random weights. torchvision side: each stage timed alone on one image (backbone + FPN, RPN head,
the box RoIAlign on ``rpn_post_nms_top_n_test`` random boxes, box head, the mask RoIAlign and
mask head on ``--detections`` random boxes). ONNX Runtime side: the compact-heads deploy graph
(the one `maskrt bench` times) run with ONNX Runtime's profiler at its default settings, node
times summed by the module their names come from. The ratio column bounds what the end to end
speed-up can be: a stage ONNX Runtime runs 1.5x faster caps the whole at 1.5x as its share
grows. Nothing here is a test; the figures go to BENCHMARKS.md with the machine line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from maskrt.export import export_onnx
from maskrt.machine import machine_facts, machine_line
from maskrt.specs import build_model, default_spec

STAGES = ("backbone", "rpn head", "RoIAlign", "box head", "mask head", "rest")


def _min_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    time.sleep(0.1)  # let the OpenMP threads stop spinning before the next stage
    return min(times)


def _stage_of(node: str, op: str) -> str:
    if op == "RoiAlign":
        return "RoIAlign"
    if node.startswith("/backbone/"):
        return "backbone"
    if node.startswith("/head/"):  # the RPN head, called directly by the deploy model
        return "rpn head"
    if "/box_head/" in node or "/box_predictor/" in node:
        return "box head"
    if "/mask_head/" in node or "/mask_predictor/" in node:
        return "mask head"
    return "rest"


def torch_stages(model: Any, x: torch.Tensor, detections: int, reps: int) -> dict[str, float]:
    heads = model.roi_heads
    g = torch.Generator().manual_seed(0)
    size = [tuple(x.shape[-2:])]

    def boxes(n: int) -> list[torch.Tensor]:
        span = torch.tensor([x.shape[3] * 0.8, x.shape[2] * 0.8])
        top_left = torch.rand(n, 2, generator=g) * span
        extent = torch.rand(n, 2, generator=g) * 300 + 8
        return [torch.cat([top_left, top_left + extent], 1)]

    out: dict[str, float] = {}
    with torch.inference_mode():
        feats = model.backbone(x)
        out["backbone"] = _min_ms(lambda: model.backbone(x), reps)
        out["rpn head"] = _min_ms(lambda: model.rpn.head(list(feats.values())), reps)
        props = boxes(model.rpn._post_nms_top_n["testing"])
        pooled = heads.box_roi_pool(feats, props, size)
        align = _min_ms(lambda: heads.box_roi_pool(feats, props, size), reps)
        out["box head"] = _min_ms(lambda: heads.box_predictor(heads.box_head(pooled)), reps)
        if heads.has_mask():
            dets = boxes(detections)
            masked = heads.mask_roi_pool(feats, dets, size)
            align += _min_ms(lambda: heads.mask_roi_pool(feats, dets, size), reps)
            out["mask head"] = _min_ms(lambda: heads.mask_predictor(heads.mask_head(masked)), reps)
        out["RoIAlign"] = align
    return out


def ort_stages(graph: Path, x: np.ndarray, reps: int) -> tuple[dict[str, float], float]:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(graph.with_suffix(""))
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feeds = {"images": x, "image_sizes": np.asarray([x.shape[-2:]], np.int32)}
    # A graph with data-dependent shapes grows ONNX Runtime's arena over its first two runs (the
    # second still page-faults its early, large tensors); one more warm-up keeps that out.
    session.run(None, feeds)
    total = _min_ms(lambda: session.run(None, feeds), reps)
    events = json.loads(Path(session.end_profiling()).read_text())
    # the timed runs only, not the first (which allocates)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    timed = runs[-reps:]
    sums: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if any(lo <= e["ts"] <= hi for lo, hi in timed):
                sums[_stage_of(e["name"], e["args"].get("op_name", ""))] += e["dur"]
    return {k: v / 1000.0 / len(timed) for k, v in sums.items()}, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    parser.add_argument("--size", default="800x1344")
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    print(machine_line(machine_facts()))
    torch.manual_seed(0)
    spec = default_spec(args.arch, box_score_thresh=0.0, box_detections_per_img=args.detections)
    model = build_model(spec)
    x = torch.rand(1, 3, h, w)
    with tempfile.TemporaryDirectory(prefix="maskrt-stages-") as tmp:
        graph = Path(tmp) / "model.onnx"
        export_onnx(model, graph, compact_heads=True, check=False, progress=False)
        tv = torch_stages(model, x, args.detections, args.reps)
        ours, ort_total = ort_stages(graph, x.numpy(), args.reps)
    print(f"{args.arch}, {h}x{w}, batch 1, {args.detections} detections; ms per image")
    print(f"{'stage':<10} {'torchvision':>12} {'ONNX Runtime':>13} {'ratio':>6}")
    rows = []
    for stage in STAGES:
        a, b = tv.get(stage), ours.get(stage)
        ratio = f"{a / b:5.2f}x" if a and b else "     -"
        print(f"{stage:<10} {a or 0:>12.1f} {b or 0:>13.1f} {ratio}")
        rows.append({"stage": stage, "torchvision_ms": a, "onnxruntime_ms": b})
    print(f"ONNX Runtime whole graph (no profiler): {ort_total:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(machine_facts()), "rows": rows,
                                         "onnxruntime_total_ms": ort_total}))  # fmt: skip


if __name__ == "__main__":
    main()
