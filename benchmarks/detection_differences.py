"""Which detections differ between torchvision eager and the deploy graph, and why.

    python benchmarks/detection_differences.py [--arch maskrcnn_resnet50_fpn] [--size 800x1344]
                                               [--num-images 4] [--checkpoint CKPT --data DIR]

The model and images are `maskrt bench`'s (a random-weight ``--arch`` keeping its top 100 boxes,
or a checkpoint; a dataset's val images or synthetic shapes scaled to ``--size``). Per image it
prints whether the two sides agree by `maskrt validate`'s rule (as many detections, all paired
one-to-one: same label, IoU > 0.5) and by the rule `maskrt bench` used before 2026-12-02 (the
detections sorted by score, labels equal and boxes within 0.01 px), then what the matched pairs
differ by: the largest box and score difference, how many pairs sit at different ranks, and the
smallest gap between two of torchvision's scores. Run it with torch held to AVX2 kernels
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) to see what an AVX2-only machine changes
on torchvision's side. Nothing here is a test; the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from maskrt.detections import Detections, match_detections, same_detections
from maskrt.export import export_onnx
from maskrt.machine import machine_facts, machine_line
from maskrt.pipeline.bench.harness import (
    OnnxRuntimeSide,
    StageTimes,
    TorchvisionSide,
    bench_images,
    bench_model,
)

OLD_BOX_TOL = 1e-2  # px: the rule `maskrt bench` counted "identical" by until 2026-12-02


def sorted_rule(a: Detections, b: Detections) -> bool:
    """The old rule: same count, and in score order the same labels and boxes within 0.01 px."""
    if len(a) != len(b):
        return False
    if len(a) == 0:
        return True
    oa, ob = np.lexsort((a.boxes[:, 0], -a.scores)), np.lexsort((b.boxes[:, 0], -b.scores))
    same_labels = np.array_equal(a.labels[oa], b.labels[ob])
    return bool(same_labels and np.abs(a.boxes[oa] - b.boxes[ob]).max() <= OLD_BOX_TOL)


def describe(a: Detections, b: Detections) -> str:
    """What torchvision's detections ``a`` and the graph's ``b`` differ by, in one line."""
    pairs = match_detections(a, b)
    line = (
        f"{len(a)} / {len(b)} detections, validate's rule: {same_detections(a, b)} "
        f"({len(pairs)} pairs), sorted 0.01 px rule: {sorted_rule(a, b)}"
    )
    if not pairs:
        return line
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    rank_a = np.argsort(np.argsort(-a.scores, kind="stable"))
    rank_b = np.argsort(np.argsort(-b.scores, kind="stable"))
    gaps = -np.diff(np.sort(a.scores)[::-1])
    return line + (
        f"; pairs differ by <= {np.abs(a.boxes[ia] - b.boxes[ib]).max():.3g} px and "
        f"{np.abs(a.scores[ia] - b.scores[ib]).max():.1e} in score, "
        f"{int((rank_a[ia] != rank_b[ib]).sum())} at another rank; "
        f"smallest score gap {gaps.min() if len(gaps) else float('nan'):.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn", help="random weights")
    parser.add_argument("--checkpoint", default="", help="a trained checkpoint instead")
    parser.add_argument("--data", default=None, help="dataset root (its val images)")
    parser.add_argument("--size", default=None, help="scale the images to HxW")
    parser.add_argument("--num-images", type=int, default=4)
    args = parser.parse_args()

    print(machine_line(machine_facts()))
    spec, model = bench_model(args.checkpoint, None if args.checkpoint else args.arch)
    images = bench_images(args.data, args.size, args.num_images)
    with tempfile.TemporaryDirectory(prefix="maskrt-differences-") as tmp:
        graph = Path(tmp) / "model.onnx"
        export_onnx(model, graph, spec=spec, compact_heads=True, check=False, progress=False)
        ours = OnnxRuntimeSide(graph, spec)
        reference = TorchvisionSide(model)
        for i, image in enumerate(images):
            a = reference.run([image], StageTimes())[0]
            b = ours.run([image], StageTimes())[0]
            print(f"image {i}: {describe(a, b)}")


if __name__ == "__main__":
    main()
