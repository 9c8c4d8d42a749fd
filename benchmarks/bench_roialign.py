"""Benchmark the maskrt RoIAlign against torchvision's MultiScaleRoIAlign.

CPU: maskrt's CPU library vs torchvision on the CPU (fp32). GPU (when torch.cuda is available and
the CUDA library was built): maskrt's CUDA kernel vs torchvision on the GPU, fp32 and fp16, timed
with CUDA events. The workload is Mask R-CNN's box pooler on an 800x1344 input: P2..P5 with 256
channels, 1000 RoIs, 7x7 output, sampling_ratio 2.

Reported per row: median latency, torchvision/maskrt ratio (> 1 = maskrt faster) and achieved
bytes/s, counted as the compulsory traffic (feature maps + RoIs read once, output written once)
divided by the median latency.

    python benchmarks/bench_roialign.py                 # full run
    python benchmarks/bench_roialign.py --quick         # fewer repetitions, smaller batch of RoIs
    python benchmarks/bench_roialign.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _timing import TimingRow, machine_header, time_calls
from torchvision.ops import MultiScaleRoIAlign

from maskrt.plugins import (
    MultiLevelRoIAlignFields,
    _library,
    multilevel_roi_align,
    multilevel_roi_align_cuda,
)

SCALES = (0.25, 0.125, 0.0625, 0.03125)


@dataclass
class Row(TimingRow):
    ratio_vs_torchvision: float
    gbytes_per_s: float
    max_abs_diff: float | None = None  # to torchvision's output (maskrt rows)


def make_inputs(
    num_rois: int, channels: int, image_hw: tuple[int, int], seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """P2..P5 ``[1, C, H/s, W/s]`` and ``[1, N, 4]`` RoIs spread over sizes and positions."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    feats = [torch.randn(1, channels, int(h * s), int(w * s), generator=g) for s in SCALES]
    side = torch.exp(torch.empty(num_rois).uniform_(np.log(8), np.log(min(h, w)), generator=g))
    aspect = torch.exp(torch.empty(num_rois).uniform_(-1, 1, generator=g))
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    x1 = torch.rand(num_rois, generator=g) * (w - bw).clamp(min=1)
    y1 = torch.rand(num_rois, generator=g) * (h - bh).clamp(min=1)
    rois = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)[None]
    return feats, rois


def traffic_bytes(feats: list[torch.Tensor], rois: torch.Tensor, out_numel: int, elem: int) -> int:
    return sum(f.numel() for f in feats) * elem + rois.numel() * 4 + out_numel * elem


def time_cpu(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    return statistics.median(time_calls(fn, "cpu", reps, warmup))


def time_cuda(fn: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    return statistics.median(time_calls(fn, "cuda", reps, warmup))


def bench_cpu(
    feats: list[torch.Tensor],
    rois: torch.Tensor,
    fields: MultiLevelRoIAlignFields,
    image_hw: tuple[int, int],
    reps: int,
    threads: int,
) -> list[Row]:
    names = [str(i) for i in range(len(feats))]
    pooler = MultiScaleRoIAlign(names, fields.output_size, fields.sampling_ratio)
    fdict = dict(zip(names, feats))
    boxes = list(rois)
    np_feats = [f.numpy() for f in feats]
    np_rois = rois.numpy()
    torch.set_num_threads(threads)
    ref_ms = time_cpu(lambda: pooler(fdict, boxes, [image_hw]), reps)
    ours_ms = time_cpu(
        lambda: multilevel_roi_align(np_feats, np_rois, fields, num_threads=threads), reps
    )
    out = multilevel_roi_align(np_feats, np_rois, fields, num_threads=threads)
    ref = pooler(fdict, boxes, [image_hw]).numpy().reshape(out.shape)
    err = float(np.abs(out - ref).max())
    print(f"cpu fp32: max abs difference to torchvision {err:.2e}", file=sys.stderr)
    nbytes = traffic_bytes(feats, rois, out.size, 4)
    return [
        Row("cpu", "fp32", "torchvision", ref_ms, 1.0, nbytes / ref_ms / 1e6),
        Row("cpu", "fp32", "maskrt", ours_ms, ref_ms / ours_ms, nbytes / ours_ms / 1e6, err),
    ]


def bench_cuda(
    feats: list[torch.Tensor],
    rois: torch.Tensor,
    fields: MultiLevelRoIAlignFields,
    image_hw: tuple[int, int],
    reps: int,
) -> list[Row]:
    rows = []
    names = [str(i) for i in range(len(feats))]
    pooler = MultiScaleRoIAlign(names, fields.output_size, fields.sampling_ratio)
    for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        cf = [f.cuda().to(dtype) for f in feats]
        cr = rois.cuda()
        fdict = dict(zip(names, cf))
        boxes = list(cr)
        ref_ms = time_cuda(functools.partial(pooler, fdict, boxes, [image_hw]), reps)
        ours_ms = time_cuda(functools.partial(multilevel_roi_align_cuda, cf, cr, fields), reps)
        out = multilevel_roi_align_cuda(cf, cr, fields)
        ref = pooler(fdict, boxes, [image_hw]).reshape(out.shape)
        err = float((out.float() - ref.float()).abs().max())
        print(f"cuda {label}: max abs difference to torchvision {err:.2e}", file=sys.stderr)
        nbytes = traffic_bytes(cf, cr, out.numel(), cf[0].element_size())
        rows += [
            Row("cuda", label, "torchvision", ref_ms, 1.0, nbytes / ref_ms / 1e6),
            Row("cuda", label, "maskrt", ours_ms, ref_ms / ours_ms, nbytes / ours_ms / 1e6, err),
        ]
    return rows


def print_table(rows: list[Row]) -> None:
    print(
        f"{'device':<6} {'dtype':<5} {'impl':<12} {'median ms':>10} {'tv/maskrt':>10} {'GB/s':>8}"
    )
    for r in rows:
        print(
            f"{r.device:<6} {r.dtype:<5} {r.impl:<12} {r.median_ms:>10.3f} "
            f"{r.ratio_vs_torchvision:>10.2f} {r.gbytes_per_s:>8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)
    parser.add_argument("--reps", type=int, default=50, help="GPU repetitions")
    parser.add_argument("--cpu-reps", type=int, default=5, help="CPU repetitions")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="3 CPU repetitions, 200 RoIs")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    num_rois = 200 if args.quick and args.rois == 1000 else args.rois
    cpu_reps = 3 if args.quick else args.cpu_reps
    image_hw = (args.height, args.width)
    feats, rois = make_inputs(num_rois, args.channels, image_hw)
    fields = MultiLevelRoIAlignFields(7, 2, 0, SCALES)
    print(machine_header())
    print(
        f"{num_rois} RoIs, {args.channels} channels, input {args.height}x{args.width}, "
        f"P2..P5 {[tuple(f.shape[2:]) for f in feats]}"
    )
    rows: list[Row] = []
    if not args.no_cpu:
        rows += bench_cpu(feats, rois, fields, image_hw, cpu_reps, args.threads)
    if torch.cuda.is_available() and _library.find(_library.CUDA) is not None:
        rows += bench_cuda(feats, rois, fields, image_hw, args.reps)
    else:
        print("cuda: skipped (no GPU or CUDA library not built)", file=sys.stderr)
    print_table(rows)
    if args.json is not None:
        meta = {
            "rois": num_rois,
            "channels": args.channels,
            "image_hw": list(image_hw),
            "threads": args.threads,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        args.json.write_text(
            json.dumps({"config": meta, "rows": [asdict(r) for r in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
