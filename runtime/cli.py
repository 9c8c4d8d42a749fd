"""``maskrt infer`` and ``maskrt build``: thin click verbs over the runtime's library functions."""

from __future__ import annotations

import click

from maskrt.cliargs import (
    arch_option,
    batch_size_option,
    checkpoint_options,
    force_option,
    max_batch_option,
    model_factory_options,
    output_option,
)

from .predictor import BACKENDS

# Shared by every verb that runs an artifact (infer, eval).
backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Default: torch for .pt/.pth, onnxruntime for .onnx, tensorrt for .engine.",
)


@click.command("infer")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@output_option(
    "Folder for detections.json, images.json and overlays/ (images) and videos/ (videos).",
    folder=True,
)
@backend_option
@batch_size_option
@click.option("--score-threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Videos: process every N-th frame.",
)
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Videos: overlap decoding, inference and encoding in threads (--no-pipeline: one "
    "frame batch after the other, to compare).",
)
@arch_option
@model_factory_options
@force_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def infer_command(
    artifact: str,
    sources: tuple[str, ...],
    output: str,
    backend: str | None,
    batch_size: int,
    score_threshold: float,
    stride: int,
    pipeline: bool,
    arch: str | None,
    model_factory: str | None,
    factory_args: tuple[str, ...],
    force: bool,
    progress: bool,
) -> None:
    """Detect on each SOURCE with ARTIFACT. A source is an image, a folder of images, a video
    file (anything FFmpeg decodes: needs the video extra), a capture device (/dev/videoN) or a
    stream URL (rtsp://...). Images: COCO JSON and overlay PNGs. Videos: an annotated MP4 and
    JSON Lines of detections per frame, in OUTPUT/videos/."""
    from .infer import run_inference
    from .videoout import sigterm_as_interrupt

    options = checkpoint_options(arch, model_factory, factory_args)
    with sigterm_as_interrupt():
        result = run_inference(
            artifact,
            list(sources),
            output,
            backend=backend,
            batch_size=batch_size,
            score_threshold=score_threshold,
            force=force,
            show_progress=progress,
            stride=stride,
            pipeline=pipeline,
            **options,
        )
    if result.detections_json is not None:
        click.echo(
            f"{result.num_detections} detections in {len(result.overlays)} images -> "
            f"{result.detections_json} and {result.detections_json.parent / 'overlays'}"
        )
    for video in result.videos:
        click.echo(
            f"{video.num_detections} detections in {video.frames_written} frames of "
            f"{video.source} -> {video.video or 'no video (no frames)'} and {video.jsonl}"
        )


@click.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@output_option("Engine file to write (its sidecar goes beside it as ENGINE.json).")
@click.option("--min", "mins", multiple=True, metavar="NAME:DxD..", help="Minimum input shape.")
@click.option("--opt", "opts", multiple=True, metavar="NAME:DxD..", help="Optimal input shape.")
@click.option("--max", "maxs", multiple=True, metavar="NAME:DxD..", help="Maximum input shape.")
@max_batch_option()
@click.option(
    "--profiles",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Copies of the profile, one per concurrent execution context.",
)
@click.option(
    "--workspace",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Builder workspace limit in GiB.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file: read if present, updated after the build.",
)
@force_option
def build_command(
    onnx_path: str,
    output: str,
    mins: tuple[str, ...],
    opts: tuple[str, ...],
    maxs: tuple[str, ...],
    max_batch: int,
    profiles: int,
    workspace: float | None,
    timing_cache: str | None,
    force: bool,
) -> None:
    """Build a TensorRT engine from a (surgered) deploy ONNX graph."""
    from pathlib import Path

    from maskrt.errors import MaskrtError
    from maskrt.onnxio import read_spec

    from .profiles import apply_overrides, default_profile, onnx_input_dims, parse_shape_args

    if not Path(onnx_path).is_file():
        raise MaskrtError(f"{onnx_path} does not exist")
    spec = read_spec(onnx_path)
    profile = apply_overrides(
        default_profile(onnx_input_dims(onnx_path), spec, max_batch),
        parse_shape_args(mins),
        parse_shape_args(opts),
        parse_shape_args(maxs),
    )
    from .trt.build import build_engine

    sidecar = build_engine(
        onnx_path,
        output,
        profile,
        num_profiles=profiles,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        force=force,
    )
    click.echo(
        f"{output}: TensorRT {sidecar.machine.tensorrt_version}, {sidecar.machine.gpu_name}, "
        f"precision {sidecar.precision}"
    )
