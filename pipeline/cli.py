"""The pipeline's verbs: ``convert``, ``validate``, ``eval``, ``bench`` and ``demo``.

Thin click layers over :mod:`maskrt.pipeline`; options come from the shared vocabulary
(:mod:`maskrt.cliargs`) and the stages' own shared options.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from maskrt.calibration.cli import fp16_groups_option, max_ap_drop_option, method_option
from maskrt.cliargs import (
    AliasedOption,
    arch_option,
    batch_size_option,
    calib_data_option,
    calib_images_option,
    checkpoint_options,
    data_option,
    factory_kwargs,
    force_option,
    json_option,
    limit_option,
    max_batch_option,
    model_factory_options,
    output_option,
)
from maskrt.contract import PRECISIONS
from maskrt.errors import MaskrtError
from maskrt.runtime.cli import backend_option
from maskrt.training.cli import iters_option


def _data_split(data: str | None, images: str | None, annotations: str | None) -> tuple[Path, Path]:
    """(image folder, annotation file) from either --data ROOT or --images + --annotations."""
    from maskrt.coco import split_paths

    if data and (images or annotations):
        raise MaskrtError("give either --data or --images with --annotations, not both")
    if data:
        return split_paths(data, "val")
    if images and annotations:
        if not Path(images).is_dir():
            raise MaskrtError(f"image folder {images} does not exist")
        return Path(images), Path(annotations)
    raise MaskrtError("say which images to use: --data DIR, or --images DIR --annotations FILE")


@click.command("convert")
@click.argument("checkpoint", type=click.Path())
@output_option("Folder for the deploy graphs and the engine.", folder=True)
@click.option(
    "--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
    help="Deploy-graph precision.",
)  # fmt: skip
@calib_data_option()
@method_option
@calib_images_option
@arch_option
@model_factory_options
@max_batch_option()
@force_option
def convert_command(
    checkpoint: str, output: str, precision: str, calib_data: tuple[str, ...], method: str,
    calib_images: int, arch: str | None, model_factory: str | None, factory_args: tuple[str, ...],
    max_batch: int, force: bool,
) -> None:  # fmt: skip
    """CHECKPOINT to a TensorRT engine: export, precision, surgery, build (where TensorRT is)."""
    from .convert import convert

    result = convert(
        checkpoint, output, precision=precision, calib_data=list(calib_data) or None, arch=arch,
        method=method, calib_images=calib_images, max_batch=max_batch, force=force,
        show_progress=True, log=lambda m: click.echo(m, err=True),
        **factory_kwargs(model_factory, factory_args),
    )  # fmt: skip
    click.echo(f"deploy graph: {result.graph}")
    click.echo(f"TensorRT input: {result.surgered}")
    click.echo(f"engine: {result.engine}" if result.engine else result.note)


@click.command("validate")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset root as `maskrt data shapes` writes it (train/ and val/, COCO format); "
    "evaluates on val/, calibrates INT8 on train/.",
)
@output_option(
    "Folder for the artifacts and validation.{md,json} (default: a temporary folder).",
    folder=True,
    required=False,
)
@click.option(
    "--tolerance",
    default=None,
    help="Allowed |ΔAP| in AP points, e.g. fp32=0.1,fp16=0.3,int8=1.5 (the defaults).",
)
@calib_images_option
@method_option
@fp16_groups_option
@max_ap_drop_option(
    "Gate INT8 rows on their AP drop alone: fail when AP falls by more than D points "
    "(the budget given to `maskrt calibrate --max-ap-drop`); replaces --tolerance int8=."
)
@limit_option
@model_factory_options
def validate_command(
    checkpoint: str,
    data: str,
    output: str | None,
    tolerance: str | None,
    calib_images: int,
    method: str,
    fp16_groups: str | None,
    max_ap_drop: float | None,
    limit: int | None,
    model_factory: str | None,
    factory_args: tuple[str, ...],
) -> None:
    """Accuracy of every precision and backend against PyTorch FP32 as one table; exits
    non-zero when a ΔAP exceeds its tolerance (a CI gate)."""
    import tempfile

    from .validate import parse_tolerances, validate

    tolerances = parse_tolerances(tolerance)
    with tempfile.TemporaryDirectory(prefix="maskrt-validate-") as tmp:
        report = validate(
            checkpoint,
            data,
            output or tmp,
            tolerances=tolerances,
            calib_images=calib_images,
            limit=limit,
            method=method,
            show_progress=True,
            fp16_groups=fp16_groups,
            max_ap_drop=max_ap_drop,
            **factory_kwargs(model_factory, factory_args),
        )
        click.echo(report.markdown())
        if output:
            click.echo(f"wrote {output}/validation.md and {output}/validation.json")
    if not report.passed:
        raise MaskrtError("validation failed: " + "; ".join(report.failures))


@click.command("eval")
@click.argument("artifact", type=click.Path())
@data_option
@click.option("--images", type=click.Path(), help="Image folder of a COCO-format set.")
@click.option("--annotations", type=click.Path(), help="COCO annotation file of those images.")
@backend_option
@arch_option
@model_factory_options
@batch_size_option
@limit_option
@json_option
@force_option
def eval_command(
    artifact: str,
    data: str | None,
    images: str | None,
    annotations: str | None,
    backend: str | None,
    arch: str | None,
    model_factory: str | None,
    factory_args: tuple[str, ...],
    batch_size: int,
    limit: int | None,
    json_out: str | None,
    force: bool,
) -> None:
    """COCO bbox/segm/keypoint AP of ARTIFACT (checkpoint, ONNX graph or engine) on the val
    split of --data, or on --images with --annotations."""
    from maskrt.fileio import check_writable

    from .evaluate import evaluate_artifact

    if not Path(artifact).exists():
        raise MaskrtError(f"{artifact} does not exist")
    images_dir, ann_file = _data_split(data, images, annotations)
    if json_out:
        check_writable(json_out, force)
    options = checkpoint_options(arch, model_factory, factory_args)
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


@click.command("bench")
@click.argument("checkpoint", required=False, type=click.Path())
@arch_option
@data_option
@click.option("--size", default=None, help="HxW of synthetic test images, e.g. 800x1344.")
@click.option(
    "--num-images", "--images", "num_images", cls=AliasedOption, hidden_aliases=("--images",),
    type=click.IntRange(min=1), default=8, show_default=True, help="Test images.",
)  # fmt: skip
@click.option("--reps", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISIONS),
    default=("fp32",),
    show_default=True,
    help="Deploy-graph precisions to time (repeatable); int8 needs --calib-data.",
)
@calib_data_option()
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
@json_option
@force_option
def bench_command(
    checkpoint: str | None,
    arch: str | None,
    data: str | None,
    size: str | None,
    num_images: int,
    reps: int,
    precisions: tuple[str, ...],
    calib_data: tuple[str, ...],
    static_heads: bool,
    no_memory: bool,
    paste: bool,
    json_out: str | None,
    force: bool,
) -> None:
    """Latency, throughput and memory: torchvision eager vs the deploy graph (ONNX Runtime).
    Without CHECKPOINT, a random-weight model of --arch."""
    import json

    from maskrt.fileio import atomic_write_text, check_writable

    from .bench import bench_end_to_end, bench_images, bench_paste_cases, format_report

    if checkpoint is None and arch is None:
        raise MaskrtError("give a CHECKPOINT, or --arch for a random-weight model")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MaskrtError(f"{checkpoint} does not exist")
    if json_out:
        check_writable(json_out, force)
    images = bench_images(data, size, num_images)
    report = bench_end_to_end(
        images,
        checkpoint=checkpoint,
        arch=arch,
        reps=reps,
        precisions=precisions,
        calib_data=list(calib_data) or None,
        compact_heads=not static_heads,
        measure_memory=not no_memory,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(format_report(report))
    if paste:
        report["paste_masks"] = bench_paste_cases(log=click.echo)
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2))


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
@click.option(
    "--retrain", is_flag=True,
    help="Train the demo model here (the shipped model's recipe) instead of using the shipped "
    "one or one trained here before.",
)  # fmt: skip
@iters_option(None)
def demo_command(cache_dir: str | None, retrain: bool, iters: int | None) -> None:
    """The main job on the embedded data: export, convert, and prove it in COCO AP.

    Uses the demo Mask R-CNN that ships with maskrt (trained by `maskrt train`); --retrain
    trains it here, with the shipped model's recipe (--iters changes its length).

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


COMMANDS = [convert_command, validate_command, eval_command, bench_command, demo_command]
