"""Core CLI verbs: `data shapes`, `train`, `eval`, `demo` (thin wrappers over the library)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .calibration.cli import method_option
from .convert import PRECISIONS
from .errors import MaskrtError


def _data_split(data: str | None, images: str | None, annotations: str | None) -> tuple[Path, Path]:
    """(image folder, annotation file) from either --data ROOT or --images + --annotations."""
    from .data.shapes import split_paths

    if data and (images or annotations):
        raise MaskrtError("give either --data or --images with --annotations, not both")
    if data:
        return split_paths(data, "val")
    if images and annotations:
        if not Path(images).is_dir():
            raise MaskrtError(f"image folder {images} does not exist")
        return Path(images), Path(annotations)
    raise MaskrtError("say which images to use: --data DIR, or --images DIR --annotations FILE")


@click.group("data")
def data_group() -> None:
    """Make datasets."""


@data_group.command("shapes")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", default=1000, show_default=True, help="Training images.")
@click.option("--val", "n_val", default=200, show_default=True, help="Held-out images.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Write into a non-empty folder.")
def shapes_command(out: str, n_train: int, n_val: int, seed: int, force: bool) -> None:
    """Write a synthetic COCO-format dataset of circles, squares and triangles to OUT."""
    from .data.shapes import make_shapes_dataset

    root = make_shapes_dataset(
        out, train=n_train, val=n_val, seed=seed, force=force, show_progress=True
    )
    click.echo(f"Wrote {n_train} train and {n_val} val images with COCO annotations to {root}")


@click.command("train")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write."
)
@click.option(
    "--data", type=click.Path(file_okay=False), help="Dataset root (default: synthetic shapes)."
)
@click.option("--iters", default=1500, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing checkpoint.")
def train_command(
    out: str, data: str | None, iters: int, batch_size: int, seed: int, force: bool
) -> None:
    """Train the demo Mask R-CNN (resnet18 + FPN, 64 channels) deterministically."""
    from .fileio import check_writable
    from .train import TrainConfig, train_demo

    check_writable(out, force)
    if data is not None and not Path(data).is_dir():
        raise MaskrtError(f"dataset root {data} does not exist")
    cfg = TrainConfig(iters=iters, batch_size=batch_size, seed=seed)
    spec, path = train_demo(out, data_root=data, config=cfg, show_progress=True)
    click.echo(f"Wrote {path} ({spec.arch}, {spec.num_classes - 1} classes)")


@click.command("eval")
@click.argument("artifact", type=click.Path())
@click.option(
    "--data", type=click.Path(), help="Dataset root written by `maskrt data` (val split)."
)
@click.option("--images", type=click.Path(), help="Image folder of a COCO-format set.")
@click.option("--annotations", type=click.Path(), help="COCO annotation file of those images.")
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnxruntime", "tensorrt"]),
    default=None,
    help="Default: torch for checkpoints, onnxruntime for .onnx, tensorrt for .engine.",
)
@click.option("--arch", default=None, help="Architecture of a plain torchvision state_dict.")
@click.option("--batch-size", default=1, show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Write COCO-format results here."
)
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def eval_command(
    artifact: str,
    data: str | None,
    images: str | None,
    annotations: str | None,
    backend: str | None,
    arch: str | None,
    batch_size: int,
    limit: int | None,
    json_out: str | None,
    force: bool,
) -> None:
    """COCO bbox/segm/keypoint AP of ARTIFACT (checkpoint, ONNX graph or engine)."""
    from .evaluate import evaluate_artifact
    from .fileio import check_writable

    if not Path(artifact).exists():
        raise MaskrtError(f"{artifact} does not exist")
    images_dir, ann_file = _data_split(data, images, annotations)
    if json_out:
        check_writable(json_out, force)
    options = {"arch": arch} if arch else {}
    result = evaluate_artifact(
        artifact,
        images_dir,
        ann_file,
        backend=backend,
        batch_size=batch_size,
        limit=limit,
        json_out=json_out,
        show_progress=True,
        **options,
    )
    click.echo(f"{result.num_images} images, {len(result.results)} detections")
    click.echo(result.scores.table())


def default_cache_dir() -> Path:
    """Where `maskrt demo` keeps its dataset and model: $MASKRT_CACHE_DIR or the user cache."""
    if os.environ.get("MASKRT_CACHE_DIR"):
        return Path(os.environ["MASKRT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maskrt"


@click.command("demo")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset and model cache [default: $MASKRT_CACHE_DIR or ~/.cache/maskrt].",
)
@click.option("--retrain", is_flag=True, help="Train the demo model again even if cached.")
@click.option("--iters", default=1500, show_default=True, help="Training iterations.")
def demo_command(cache_dir: str | None, retrain: bool, iters: int) -> None:
    """The main job on the embedded data: train, export, convert, and prove it in COCO AP.

    Ends with one table: PyTorch FP32 against the ONNX FP32, surgered (plugin), FP16 and INT8
    graphs (and TensorRT engines where TensorRT is installed); exits 1 if a ΔAP is out of
    tolerance."""
    from .demo import run_demo

    report = run_demo(
        Path(cache_dir) if cache_dir else default_cache_dir(),
        retrain=retrain,
        iters=iters,
        echo=click.echo,
    )
    if not report.passed:
        raise MaskrtError("validation failed: " + "; ".join(report.failures))


COMMANDS = [data_group, train_command, eval_command, demo_command]


@click.command("bench")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option(
    "--arch",
    default=None,
    help="Without CHECKPOINT: benchmark this architecture with random weights.",
)
@click.option("--data", type=click.Path(file_okay=False), help="Dataset root (val images).")
@click.option("--size", default=None, help="HxW of synthetic test images, e.g. 800x1344.")
@click.option("--images", "num_images", default=8, show_default=True)
@click.option("--reps", default=5, show_default=True)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISIONS),
    default=("fp32",),
    show_default=True,
    help="Deploy-graph precisions to time (repeatable); int8 needs --calib-data.",
)
@click.option(
    "--calib-data", type=click.Path(exists=True), help="INT8: calibration images (folder)."
)
@click.option(
    "--static-heads",
    is_flag=True,
    help="Time the all-static graph made for TensorRT, not the compact-heads one made for "
    "ONNX Runtime (see `maskrt export --compact-heads`).",
)
@click.option("--no-memory", is_flag=True, help="Skip the peak-RSS subprocesses.")
@click.option(
    "--paste/--no-paste",
    default=True,
    show_default=True,
    help="Also time mask pasting (100 detections, 800x1344; random and saturated masks).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True)
def bench_command(
    checkpoint: str | None,
    arch: str | None,
    data: str | None,
    size: str | None,
    num_images: int,
    reps: int,
    precisions: tuple[str, ...],
    calib_data: str | None,
    static_heads: bool,
    no_memory: bool,
    paste: bool,
    json_out: str | None,
    force: bool,
) -> None:
    """Latency, throughput and memory: torchvision eager vs the deploy graph (ONNX Runtime)."""
    import json

    from .bench import PASTE_CASES, bench_end_to_end, bench_paste_masks, format_report
    from .fileio import atomic_write_text, check_writable

    if checkpoint is None and arch is None:
        raise MaskrtError("give a CHECKPOINT, or --arch for a random-weight model")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MaskrtError(f"{checkpoint} does not exist")
    if json_out:
        check_writable(json_out, force)
    images = _bench_images(data, size, num_images)
    report = bench_end_to_end(
        images,
        checkpoint=checkpoint,
        arch=arch,
        reps=reps,
        precisions=precisions,
        calib_data=calib_data,
        compact_heads=not static_heads,
        measure_memory=not no_memory,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(format_report(report))
    if paste:
        report["paste_masks"] = []
        for kind in PASTE_CASES:
            p = bench_paste_masks(kind=kind)
            report["paste_masks"].append(p)
            click.echo(
                f"\nMask pasting, {p['detections']} {kind} masks on "
                f"{p['image_size'][0]}x{p['image_size'][1]}: "
                f"**{p['speedup']:.2f}x** (numpy {p['maskrt numpy']['median']:.1f} ms vs "
                f"torchvision {p['torchvision']['median']:.1f} ms median), "
                f"identical masks: {p['identical']}"
            )
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2))


def _bench_images(data: str | None, size: str | None, count: int) -> list:
    """RGB uint8 images: a dataset's val images, or synthetic shapes scaled to --size."""
    import numpy as np
    from PIL import Image

    from .data.shapes import generate_image, split_paths
    from .runtime import read_image

    if count <= 0:
        raise MaskrtError("--images must be positive")
    if data:
        image_dir, _ = split_paths(data, "val")
        paths = sorted(image_dir.glob("*.png"))[:count]
        images = [read_image(p) for p in paths]
    else:
        images = [generate_image(123, "val", i)[0] for i in range(count)]
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise MaskrtError(f"--size wants HxW like 800x1344, got {size!r}") from None
        images = [
            np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR))
            for im in images
        ]
    return images


COMMANDS.append(bench_command)


@click.command("convert")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--calib-data", type=click.Path(), help="INT8: calibration images (folder).")
@method_option
@click.option("--max-images", default=512, show_default=True, help="INT8 calibration images.")
@click.option("--arch", default=None, help="Architecture of a plain torchvision state_dict.")
@click.option("--max-batch", default=1, show_default=True, help="Engine profile's largest batch.")
@click.option("--force", is_flag=True, help="Overwrite outputs in OUT.")
def convert_command(
    checkpoint: str, out: str, precision: str, calib_data: str | None, method: str,
    max_images: int, arch: str | None, max_batch: int, force: bool,
) -> None:  # fmt: skip
    """CHECKPOINT to a TensorRT engine: export, precision, surgery, build (where TensorRT is)."""
    from .convert import convert

    result = convert(
        checkpoint, out, precision=precision, calib_data=calib_data, arch=arch, method=method,
        max_images=max_images, max_batch=max_batch, force=force, show_progress=True,
        log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(f"deploy graph: {result.graph}")
    click.echo(f"TensorRT input: {result.surgered}")
    click.echo(f"engine: {result.engine}" if result.engine else result.note)


COMMANDS.append(convert_command)
