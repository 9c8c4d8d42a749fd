"""Pre-processing: maskrt's numpy resize + pad against torchvision's GeneralizedRCNNTransform.

    python benchmarks/bench_preprocess.py [--sizes 480x640,800x1344,1080x1920] [--reps 40]
                                          [--min-size 800 --max-size 1333] [--json OUT]

Each size is one random RGB image; each side runs its calls in blocks of 10, the blocks of the
two sides taking turns (so that a busy moment of the machine hits both, while neither side's
call follows the other's directly: PyTorch's OpenMP threads spin a while after each call and
would slow whatever runs next), and reports its fastest and median call. Both sides do what the
deploy graph's caller needs: torchvision resizes, normalises and pads; maskrt resizes and pads
(the graph normalises inside). The agreement column is the largest difference of maskrt's
output, normalised like torchvision's, in its valid region. Nothing here is a test; the figures
go to BENCHMARKS.md with the machine line printed first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrt.machine import machine_facts, machine_line
from maskrt.runtime.preprocess import preprocess
from maskrt.specs import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="480x640,800x1344,1080x1920")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    print(machine_line(machine_facts()))
    spec = ModelSpec(arch="maskrcnn_resnet50_fpn", min_size=args.min_size, max_size=args.max_size)
    transform = GeneralizedRCNNTransform(
        spec.min_size, spec.max_size, list(spec.image_mean), list(spec.image_std)
    ).eval()
    mean = torch.tensor(spec.image_mean).reshape(3, 1, 1)
    std = torch.tensor(spec.image_std).reshape(3, 1, 1)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'image':>10} {'resized':>10} {'torchvision ms':>15} {'maskrt ms':>12} "
          f"{'ratio':>6} {'max diff':>9}")  # fmt: skip
    for text in args.sizes.split(","):
        h, w = (int(v) for v in text.split("x"))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

        def torchvision_side(image: np.ndarray = image) -> torch.Tensor:
            x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
            with torch.inference_mode():
                return transform([x])[0].tensors

        def maskrt_side(image: np.ndarray = image) -> np.ndarray:
            return preprocess([image], spec).images

        times: dict[str, list[float]] = {"torchvision": [], "maskrt": []}
        for _ in range(3):  # warm-up: thread pools, caches
            torchvision_side(), maskrt_side()
        for _ in range(max(1, args.reps // 10)):
            for name, fn in (("torchvision", torchvision_side), ("maskrt", maskrt_side)):
                fn()  # the block's first call absorbs the other side's leftovers
                for _ in range(10):
                    start = time.perf_counter()
                    fn()
                    times[name].append(1000.0 * (time.perf_counter() - start))
        batch = preprocess([image], spec)
        rh, rw = (int(v) for v in batch.image_sizes[0])
        ours = (torch.from_numpy(batch.images[0, :, :rh, :rw]) - mean) / std
        theirs = torchvision_side()[0, :, :rh, :rw]
        diff = float((ours - theirs).abs().max())
        row = {
            "image": [h, w],
            "resized": [rh, rw],
            "torchvision_min_ms": min(times["torchvision"]),
            "torchvision_median_ms": float(np.median(times["torchvision"])),
            "maskrt_min_ms": min(times["maskrt"]),
            "maskrt_median_ms": float(np.median(times["maskrt"])),
            "max_abs_diff": diff,
        }
        rows.append(row)
        ratio = row["torchvision_median_ms"] / row["maskrt_median_ms"]
        print(f"{h}x{w:<5} {rh}x{rw:<5} {row['torchvision_median_ms']:>15.2f} "
              f"{row['maskrt_median_ms']:>12.2f} {ratio:>5.2f}x {diff:>9.1e}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(machine_facts()), "rows": rows}))


if __name__ == "__main__":
    main()
