"""The deploy model in PyTorch with maskrt's RoIAlign in place of torchvision's, vs torchvision.

Workload: ``maskrcnn_resnet50_fpn`` with random weights and ``box_score_thresh`` 0, so that every
image yields K = 100 detections and the mask head runs on all of them, on 800x1344 inputs. Both
sides start from the padded batch and stop before mask pasting: torchvision's network is timed
from its normalized batch (backbone + RPN + RoI heads), the deploy model (``maskrt.export``'s
static-shape twin) from ``images`` + ``image_sizes`` to the contract's padded outputs.

Rows, per dtype:
  torchvision         torchvision eager (its MultiScaleRoIAlign: one roi_align per level)
  deploy/reference    the deploy model with the RoIAlign unit's reference body (every RoI pooled
                      from every level, then the right level kept -- what the ONNX function does)
  deploy/maskrt       the deploy model with maskrt's multi-level kernel (CUDA on a GPU, the CPU
                      library on the CPU)

Reported: median and p90 latency, torchvision/row ratio (> 1 = faster than torchvision), peak
CUDA memory, and the largest differences to torchvision's detections (sorted by score).

    python benchmarks/bench_deploy_torch.py                      # CUDA when available, fp32+fp16
    python benchmarks/bench_deploy_torch.py --device cpu --dtype fp32 --reps 3
    python benchmarks/bench_deploy_torch.py --json out.json
"""

from __future__ import annotations

import argparse
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
from torch import Tensor

from maskrt.export import DeployModel, RoIAlignFn, RoIAlignUnit
from maskrt.plugins import multilevel_roi_align, multilevel_roi_align_cuda
from maskrt.specs import build_model, default_spec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class Row(TimingRow):
    p90_ms: float
    ratio_vs_torchvision: float
    peak_mem_mib: float | None
    max_score_diff: float | None
    max_box_diff: float | None


def maskrt_roi_align(device: str) -> RoIAlignFn:
    """A deploy-model RoIAlign that calls maskrt's kernel (CUDA) or CPU library."""

    def pool(features: list[Tensor], rois: Tensor, unit: RoIAlignUnit) -> Tensor:
        # a unit's constants are the plugin's fields (one type)
        if device == "cuda":
            return multilevel_roi_align_cuda(features, rois, unit)
        out = multilevel_roi_align([f.numpy() for f in features], rois.numpy(), unit)
        return torch.from_numpy(out)

    return pool


def sorted_detections(boxes: Tensor, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
    order = torch.argsort(scores.float(), descending=True)
    return boxes[order].float().cpu().numpy(), scores[order].float().cpu().numpy()


def differences(
    ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """Largest score and box differences over the detections both sides have."""
    n = min(len(ref[1]), len(got[1]))
    if n == 0:
        return 0.0, 0.0
    return (
        float(np.abs(ref[1][:n] - got[1][:n]).max()),
        float(np.abs(ref[0][:n] - got[0][:n]).max()),
    )


def bench_dtype(
    device: str, dtype_name: str, batch: int, hw: tuple[int, int], reps: int, warmup: int
) -> list[Row]:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    spec = default_spec("maskrcnn_resnet50_fpn", box_score_thresh=0.0, min_size=hw[0])
    spec = spec.replace(max_size=hw[1])
    model = build_model(spec)
    raw = torch.rand(batch, 3, *hw)
    with torch.no_grad():
        batched, _ = model.transform(list(raw))
    if tuple(batched.tensors.shape[-2:]) != hw:
        raise SystemExit(f"--size must be multiples of 32 that the transform keeps, got {hw}")
    variants: dict[str, Any] = {
        "deploy/reference": DeployModel(model),
        "deploy/maskrt": DeployModel(model, roi_align=maskrt_roi_align(device)),
    }
    model = model.to(device=device, dtype=dtype)
    variants = {k: v.to(device=device, dtype=dtype).eval() for k, v in variants.items()}
    tv_input = batched.tensors.to(device=device, dtype=dtype)
    images = raw.to(device=device, dtype=dtype)
    image_sizes = torch.tensor(batched.image_sizes, dtype=torch.int32, device=device)

    def torchvision_forward() -> Any:
        batched.tensors = tv_input
        features = model.backbone(tv_input)
        proposals, _ = model.rpn(batched, features)
        detections, _ = model.roi_heads(features, proposals, batched.image_sizes)
        return detections

    calls: dict[str, Callable[[], Any]] = {"torchvision": torchvision_forward}
    for name, deploy in variants.items():
        calls[name] = lambda deploy=deploy: deploy(images, image_sizes)

    rows = []
    with torch.inference_mode():
        tv_dets = torchvision_forward()
        ref = sorted_detections(tv_dets[0]["boxes"], tv_dets[0]["scores"])
        tv_median = None
        for name, fn in calls.items():
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            try:
                out = fn()
                times = time_calls(fn, device, reps, warmup)
            except Exception as e:  # a failing variant is reported, not fatal to the others
                print(f"{device} {dtype_name} {name}: failed: {e}", file=sys.stderr)
                continue
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
            median = statistics.median(times)
            if name == "torchvision":
                tv_median, score_diff, box_diff = median, None, None
            else:
                num = int(out[0][0])
                got = sorted_detections(out[1][0, :num], out[2][0, :num])
                score_diff, box_diff = differences(ref, got)
            rows.append(
                Row(
                    device,
                    dtype_name,
                    name,
                    median,
                    float(np.percentile(times, 90)),
                    (tv_median / median) if tv_median else float("nan"),
                    peak,
                    score_diff,
                    box_diff,
                )
            )
    return rows


def print_table(rows: list[Row]) -> None:
    print(
        f"{'device':<6} {'dtype':<5} {'impl':<17} {'median ms':>10} {'p90 ms':>9} "
        f"{'tv/row':>7} {'peak MiB':>9} {'max|dscore|':>11} {'max|dbox|':>10}"
    )
    for r in rows:
        peak = f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib is not None else "-"
        ds = f"{r.max_score_diff:.1e}" if r.max_score_diff is not None else "-"
        db = f"{r.max_box_diff:.1e}" if r.max_box_diff is not None else "-"
        print(
            f"{r.device:<6} {r.dtype:<5} {r.impl:<17} {r.median_ms:>10.2f} {r.p90_ms:>9.2f} "
            f"{r.ratio_vs_torchvision:>7.2f} {peak:>9} {ds:>11} {db:>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=None)
    parser.add_argument("--size", default="800x1344", help="HxW, multiples of 32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    # torchvision's CPU kernels have no fp16 RoIAlign/NMS worth timing.
    dtypes = args.dtype or (["fp32", "fp16"] if device == "cuda" else ["fp32"])
    h, w = (int(v) for v in args.size.lower().split("x"))
    threads = f"{torch.get_num_threads()} CPU threads"
    name = torch.cuda.get_device_name() if device == "cuda" else threads
    print(machine_header())
    print(f"{name}; maskrcnn_resnet50_fpn (random weights) batch {args.batch} at {h}x{w}")
    rows: list[Row] = []
    for dtype_name in dtypes:
        rows += bench_dtype(device, dtype_name, args.batch, (h, w), args.reps, args.warmup)
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
