"""Where inference time goes, and the most any ONNX Runtime graph could gain: torchvision eager
stage by stage vs ONNX Runtime's profile of the deploy graph, with each stage's FLOPs.

    python benchmarks/bench_stages.py --arch maskrcnn_resnet50_fpn --size 800x1344 [--batch 1]
    python benchmarks/bench_stages.py --checkpoint $D/demo_maskrcnn_v2.pt --data $D/shapes \
                                      --num-images 16 --batch 4
    [--reps 3] [--json OUT]

The images are `maskrt bench`'s (a dataset's val images, or synthetic shapes scaled to
``--size``), in batches of ``--batch``. torchvision side: on each batch, each stage timed alone
on the model's own intermediate results (backbone + FPN, RPN head, RoIAlign of the box head's
proposals and of the detections, box head, mask head), and the whole network (backbone, RPN and
RoI heads) without pre- and post-processing. ONNX Runtime side: the compact-heads deploy graph
(the one `maskrt bench` times) at its default settings, node times from its profiler summed by
the module their names come from, and the whole graph timed without the profiler. Whole-network
and torchvision stage times are the best of ``--reps`` runs; ONNX Runtime's stage times are the
mean over its profiled runs, which if anything puts RoIAlign's floor a little high.

The limit: each stage's FLOPs (counted by ``torch.utils.flop_counter`` on the torchvision side;
the deploy graph runs the same layers on the same rows) divided by the fastest FP32 rate ONNX
Runtime reaches on this machine (large 3x3 convolutions and a MatMul run alone, or any stage of
the graph, whichever was faster) is the least time any kernel of ONNX Runtime's could take for
that stage. Three bounds on the inference speed-up follow, each the torchvision network's time
over a sum: every FLOP-counted stage at the peak rate, plus RoIAlign at ONNX Runtime's
``RoiAlign`` time (the only standard op that computes it), plus the rest (decoding, NMS, glue) at
its share of the unprofiled run; then the same with the rest free; then FLOPs alone. Nothing
here is a test; the figures go to BENCHMARKS.md with the machine line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch.utils.flop_counter import FlopCounterMode

from maskrt.checkpoint import load_checkpoint
from maskrt.export import export_onnx
from maskrt.machine import machine_facts, machine_line
from maskrt.pipeline.bench import bench_images
from maskrt.runtime.backends.torch_backend import to_tensor
from maskrt.runtime.preprocess import preprocess
from maskrt.specs import build_model, default_spec

STAGES = ("backbone", "rpn head", "RoIAlign", "box head", "mask head", "rest")
COMPUTE_STAGES = ("backbone", "rpn head", "box head", "mask head")  # FLOP-counted


def _min_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    time.sleep(0.1)  # let the OpenMP threads stop spinning before the next stage
    return min(times)


def _gflop(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _add(into: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        into[key] = into.get(key, 0.0) + value


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


def torch_stages(
    model: Any, images: list[np.ndarray], reps: int
) -> tuple[dict[str, float], dict[str, float], float, int]:
    """One batch: ms per stage, GFLOP per stage, ms of the whole network, bilinear samples
    RoIAlign takes (box proposals and detections, every channel)."""
    heads = model.roi_heads
    ms: dict[str, float] = {}
    gflop: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> None:  # RoIAlign adds up box and mask poolers
        ms[name] = ms.get(name, 0.0) + _min_ms(fn, reps)
        gflop[name] = gflop.get(name, 0.0) + _gflop(fn)

    with torch.inference_mode():
        batch, _ = model.transform([to_tensor(im) for im in images])
        sizes = batch.image_sizes
        feats = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, feats)
        dets, _ = heads(feats, proposals, sizes)
        stage("backbone", lambda: model.backbone(batch.tensors))
        stage("rpn head", lambda: model.rpn.head(list(feats.values())))
        pooled = heads.box_roi_pool(feats, proposals, sizes)
        stage("RoIAlign", lambda: heads.box_roi_pool(feats, proposals, sizes))
        stage("box head", lambda: heads.box_predictor(heads.box_head(pooled)))
        samples = int(pooled.numel()) * heads.box_roi_pool.sampling_ratio**2
        boxes = [d["boxes"] for d in dets]
        if heads.has_mask() and sum(len(b) for b in boxes):
            masked = heads.mask_roi_pool(feats, boxes, sizes)
            stage("RoIAlign", lambda: heads.mask_roi_pool(feats, boxes, sizes))
            stage("mask head", lambda: heads.mask_predictor(heads.mask_head(masked)))
            samples += int(masked.numel()) * heads.mask_roi_pool.sampling_ratio**2

        def whole() -> None:
            f = model.backbone(batch.tensors)
            p, _ = model.rpn(batch, f)
            heads(f, p, sizes)

        total = _min_ms(whole, reps)
    ms["rest"] = max(0.0, total - sum(ms.values()))
    return ms, gflop, total, samples


def ort_stages(
    graph: Path, batches: list[dict[str, np.ndarray]], reps: int
) -> tuple[list[dict[str, float]], list[float]]:
    """Per batch: ms per stage (profiled) and ms of the whole graph (not profiled)."""
    plain = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(graph.with_suffix(""))
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    totals = []
    for feeds in batches:
        # A graph with data-dependent shapes grows ONNX Runtime's arena over its first two runs
        # (the second still page-faults its early, large tensors): two warm-ups keep that out.
        plain.run(None, feeds)
        totals.append(_min_ms(partial(plain.run, None, feeds), reps))
        session.run(None, feeds)
        _min_ms(partial(session.run, None, feeds), reps)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    # per batch: 2 warm-ups (one here, one in _min_ms), then the reps timed runs
    per_batch = [runs[i * (reps + 2) + 2 : (i + 1) * (reps + 2)] for i in range(len(batches))]
    stages: list[dict[str, float]] = []
    for timed in per_batch:
        sums: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                if any(lo <= e["ts"] <= hi for lo, hi in timed):
                    stage = _stage_of(e["name"], e["args"].get("op_name", ""))
                    sums[stage] = sums.get(stage, 0.0) + e["dur"] / 1000.0 / len(timed)
        stages.append(sums)
    return stages, totals


def _rate_gflops(
    node: onnx.NodeProto, shapes: dict[str, list[int]], flops: float, reps: int
) -> float:
    """GFLOP/s of one node run alone in ONNX Runtime at its default settings (best of reps)."""
    rng = np.random.default_rng(0)
    out = node.output[0]
    graph = helper.make_graph(
        [node],
        "peak",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shapes[x]) for x in node.input],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {x: rng.random(shapes[x], dtype=np.float32) for x in node.input}
    return flops / _min_ms(lambda: session.run(None, feeds), max(reps, 20)) / 1e6


def peak_gflops(reps: int) -> float:
    """The fastest FP32 rate ONNX Runtime reaches here: large 3x3 convolutions (its NCHWc
    kernels, faster than its MatMul on AVX-512) and a 2048^3 MatMul, best of all."""
    rates = []
    for c, hw in ((256, 56), (512, 28)):
        conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        shapes = {"x": [1, c, hw, hw], "w": [c, c, 3, 3]}
        rates.append(_rate_gflops(conv, shapes, 2.0 * c * c * 9 * hw * hw, reps))
    n = 2048
    matmul = helper.make_node("MatMul", ["a", "b"], ["c"])
    rates.append(_rate_gflops(matmul, {"a": [n, n], "b": [n, n]}, 2.0 * n**3, reps))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn", help="random weights")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint instead")
    parser.add_argument("--data", default=None, help="dataset root (its val images)")
    parser.add_argument("--size", default=None, help="scale the images to HxW")
    parser.add_argument("--num-images", type=int, default=None, help="default: one batch")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--detections", type=int, default=100, help="random-weight models")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    print(machine_line(machine_facts()))
    torch.manual_seed(0)
    if args.checkpoint:
        spec, model = load_checkpoint(args.checkpoint)
    else:
        # score threshold 0: a random-weight model still detects --detections objects
        spec = default_spec(args.arch, box_score_thresh=0.0, box_detections_per_img=args.detections)
        model = build_model(spec)
    model.eval()
    images = bench_images(args.data, args.size, args.num_images or args.batch)
    groups = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    peak = peak_gflops(args.reps)

    tv_ms: dict[str, float] = {}
    tv_gflop: dict[str, float] = {}
    tv_total = 0.0
    samples = 0
    for group in groups:
        ms, gflop, total, n = torch_stages(model, group, args.reps)
        _add(tv_ms, ms)
        _add(tv_gflop, gflop)
        tv_total += total
        samples += n
    with tempfile.TemporaryDirectory(prefix="maskrt-stages-") as tmp:
        graph = Path(tmp) / "model.onnx"
        export_onnx(model, graph, spec=spec, compact_heads=True, check=False, progress=False)
        feeds = []
        for group in groups:
            b = preprocess(group, spec)
            feeds.append({"images": b.images, "image_sizes": b.image_sizes})
        per_batch, totals = ort_stages(graph, feeds, args.reps)
    ours: dict[str, float] = {}
    for s in per_batch:
        _add(ours, s)
    ort_total = sum(totals)
    k = len(groups)  # figures below: per call (one batch), averaged over the batches
    # The profiler's own cost lands between nodes; "rest" is what the unprofiled run leaves.
    ours["rest"] = max(0.0, ort_total - sum(v for s, v in ours.items() if s != "rest"))

    shape = args.size or ("dataset images" if args.data else "synthetic shapes")
    name = Path(args.checkpoint).stem if args.checkpoint else args.arch
    print(f"{name}, {len(images)} images ({shape}), batch {args.batch}; ms per call")
    # A stage of the graph may run faster than the nodes alone did (the machine drifts): the peak
    # is at least the best rate seen anywhere, so that no floor exceeds a measured time.
    seen = [tv_gflop[s] / ours[s] * 1000.0 for s in COMPUTE_STAGES if ours.get(s) and s in tv_gflop]
    peak = max([peak, *seen])
    print(
        f"peak FP32 rate of ONNX Runtime here: {peak:.0f} GFLOP/s (its best: nodes alone, stages)"
    )
    head = f"{'stage':<10} {'GFLOP':>7} {'torchvision':>12} {'ONNX Runtime':>13} {'ratio':>6}"
    print(head + f" {'ORT GFLOP/s':>12} {'floor ms':>9}")
    rows = []
    floor_flops = floor_align = floor_std = 0.0
    for stage in STAGES:
        a, b, g = tv_ms.get(stage, 0.0) / k, ours.get(stage, 0.0) / k, tv_gflop.get(stage, 0.0) / k
        if stage in COMPUTE_STAGES:
            floor = 1000.0 * g / peak
            floor_std += floor
            floor_flops += floor
        else:
            floor = b  # RoiAlign is the only standard op for it; the rest as measured
            floor_std += b
            floor_align += b if stage == "RoIAlign" else 0.0
        ratio = f"{a / b:5.2f}x" if a and b else "     -"
        rate = f"{g / b * 1000:12.0f}" if g and b else f"{'-':>12}"
        print(f"{stage:<10} {g:>7.2f} {a:>12.1f} {b:>13.1f} {ratio} {rate} {floor:>9.1f}")
        rows.append(
            {
                "stage": stage,
                "gflop": g,
                "torchvision_ms": a,
                "onnxruntime_ms": b,
                "floor_ms": floor,
            }
        )
    tv_call, ort_call = tv_total / k, ort_total / k
    ns = 1e6 * ours.get("RoIAlign", 0.0) / samples if samples else float("nan")
    whole = f"torchvision {tv_call:.1f} ms, ONNX Runtime {ort_call:.1f} ms"
    print(f"whole network, no profiler: {whole} ({tv_call / ort_call:.2f}x)")
    print(f"RoIAlign: {samples / k / 1e6:.1f} M bilinear samples per call, {ns:.2f} ns each")
    for what, bound_ms in (
        ("FLOPs at peak + RoiAlign + rest as measured", floor_std),
        ("FLOPs at peak + RoiAlign, rest free", floor_flops + floor_align),
        ("FLOPs at peak only", floor_flops),
    ):
        print(f"inference speed-up bound, {what}: {tv_call / bound_ms:.2f}x ({bound_ms:.1f} ms)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine_line(machine_facts()),
                    "model": name,
                    "batch": args.batch,
                    "images": len(images),
                    "peak_gflops": peak,
                    "rows": rows,
                    "torchvision_ms": tv_call,
                    "onnxruntime_ms": ort_call,
                    "roialign_samples": samples / k,
                    "bound_standard_ops_ms": floor_std,
                    "bound_roialign_rest_free_ms": floor_flops + floor_align,
                    "bound_flops_only_ms": floor_flops,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
