"""`maskrt demo`: the whole pipeline on the embedded synthetic shapes data.

Builds (or reuses) the dataset and the demo model in a cache folder, then evaluates each
artifact the pipeline produces on the held-out split and prints one accuracy table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from maskrt.coco import split_paths
from maskrt.errors import MaskrtError
from maskrt.specs import DEMO_ARCH
from maskrt.training.shapes import make_shapes_dataset

from .validate import ValidationReport

DEMO_TRAIN_IMAGES = 1000
DEMO_VAL_IMAGES = 200
DEMO_SEED = 0
DEMO_CALIB_IMAGES = 256
# Seconds per training iteration (--retrain) on 2-core machines, torch's AVX-512 to its AVX2
# kernels: BENCHMARKS.md, "2026-12-06: a new demo model, shipped".
DEMO_SECONDS_PER_ITER = (0.33, 0.47)


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


def _check_iters(retrain: bool, iters: int | None) -> None:
    if iters is not None and not retrain:
        raise MaskrtError("--iters sets the length of --retrain's training; pass --retrain")


def ensure_model(
    path: Path,
    data_root: Path,
    retrain: bool,
    iters: int | None,
    echo: Callable[[str], None],
) -> Path:
    """The demo checkpoint: one trained here before (``path``, by ``--retrain``), else the
    shipped one after its hash check; with ``retrain``, trained here now into ``path`` with the
    shipped model's recipe (``iters`` overrides its length)."""
    from maskrt.training.shipped import shipped_demo_checkpoint
    from maskrt.training.train import TrainConfig, train_demo

    _check_iters(retrain, iters)
    if not retrain:
        if path.is_file():
            echo(f"Reusing the demo model trained here before: {path} (delete it to use the "
                 "shipped one)")  # fmt: skip
            return path
        shipped = shipped_demo_checkpoint()
        echo(f"Using the shipped demo model {shipped} (SHA-256 checked)")
        return shipped
    config = TrainConfig(seed=DEMO_SEED)
    if iters is not None:
        config = dataclasses.replace(config, iters=iters)
    low, high = (config.iters * s / 60 for s in DEMO_SECONDS_PER_ITER)
    echo(
        f"Training the demo Mask R-CNN ({config.iters} iterations; ~{low:.0f}-{high:.0f} minutes "
        "on 2 cores) ..."
    )
    train_demo(path, data_root=data_root, config=config, show_progress=True)
    return path


def run_demo(
    cache_dir: Path,
    retrain: bool = False,
    iters: int | None = None,
    calib_images: int = DEMO_CALIB_IMAGES,
    echo: Callable[[str], None] = print,
) -> ValidationReport:
    """Data, model, then every artifact of the pipeline scored against PyTorch in one table."""
    from .validate import validate

    _check_iters(retrain, iters)  # before any work
    start = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_root = ensure_dataset(cache_dir / "shapes", echo)
    # Named after the architecture: a model trained here of an earlier demo architecture is not
    # reused.
    checkpoint = ensure_model(cache_dir / f"{DEMO_ARCH}.pt", data_root, retrain, iters, echo)
    out = cache_dir / "artifacts"
    echo(f"Exporting, converting and evaluating every artifact into {out} ...")
    report = validate(checkpoint, data_root, out, calib_images=calib_images, show_progress=True)
    echo("")
    echo(f"Held-out shapes, {DEMO_VAL_IMAGES} images ({time.perf_counter() - start:.0f} s in all):")
    echo(report.markdown())
    return report
