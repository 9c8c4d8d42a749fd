"""`maskrt demo`: the whole pipeline on the embedded synthetic shapes data.

Builds (or reuses) the dataset and the demo model in a cache folder, then evaluates each
artifact the pipeline produces on the held-out split and prints one accuracy table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .data.shapes import make_shapes_dataset, split_paths
from .errors import MaskrtError
from .evaluate import evaluate_artifact

DEMO_TRAIN_IMAGES = 1000
DEMO_VAL_IMAGES = 200
DEMO_SEED = 0


def ensure_dataset(root: Path, echo: Callable[[str], None]) -> Path:
    """The cached shapes dataset, generated on first use."""
    try:
        split_paths(root, "train")
        split_paths(root, "val")
        return root
    except MaskrtError:
        echo(f"Generating the synthetic shapes dataset in {root} ...")
        return make_shapes_dataset(
            root,
            train=DEMO_TRAIN_IMAGES,
            val=DEMO_VAL_IMAGES,
            seed=DEMO_SEED,
            force=True,
            show_progress=True,
        )


def ensure_model(
    path: Path, data_root: Path, retrain: bool, iters: int, echo: Callable[[str], None]
) -> Path:
    """The cached demo checkpoint, trained on first use (or when ``retrain``)."""
    from .train import TrainConfig, train_demo

    if path.is_file() and not retrain:
        echo(f"Reusing the demo model {path}")
        return path
    echo(f"Training the demo Mask R-CNN ({iters} iterations; ~8 minutes on 2 cores) ...")
    train_demo(
        path,
        data_root=data_root,
        config=TrainConfig(iters=iters, seed=DEMO_SEED),
        show_progress=True,
    )
    return path


def run_demo(
    cache_dir: Path, retrain: bool = False, iters: int = 800, echo: Callable[[str], None] = print
) -> dict[str, dict[str, dict[str, float]]]:
    """Run the demo; return {artifact label: {iou type: {stat: value}}}."""
    start = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_dataset(cache_dir / "shapes", echo)
    checkpoint = ensure_model(cache_dir / "demo_maskrcnn.pt", data_root, retrain, iters, echo)
    images_dir, ann_file = split_paths(data_root, "val")

    rows: dict[str, dict[str, dict[str, float]]] = {}
    echo("Evaluating the PyTorch model on the held-out split ...")
    result = evaluate_artifact(
        checkpoint, images_dir, ann_file, backend="torch", show_progress=True
    )
    rows["pytorch fp32"] = result.scores.to_dict()

    echo("")
    echo(
        f"Held-out shapes: {result.num_images} images  (total {time.perf_counter() - start:.0f} s)"
    )
    echo(format_rows(rows))
    return rows


def format_rows(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """One line per artifact: bbox AP and segm AP (and their difference to the first row)."""
    ref = next(iter(rows.values()))
    lines = [f"{'artifact':<24}{'bbox AP':>10}{'segm AP':>10}{'Δbbox':>9}{'Δsegm':>9}"]
    for label, stats in rows.items():
        bbox, segm = stats["bbox"]["AP"], stats.get("segm", {}).get("AP", float("nan"))
        d_bbox = bbox - ref["bbox"]["AP"]
        d_segm = segm - ref.get("segm", {}).get("AP", float("nan"))
        lines.append(f"{label:<24}{bbox:>10.3f}{segm:>10.3f}{d_bbox:>+9.3f}{d_segm:>+9.3f}")
    return "\n".join(lines)
