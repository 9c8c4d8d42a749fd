"""``maskrt calibrate`` and ``maskrt validate``: thin click verbs over the library functions."""

from __future__ import annotations

import click

from maskrt.errors import MaskrtError

from .int8 import METHODS

# Shared by every verb that calibrates INT8 (calibrate, validate, convert).
method_option = click.option(
    "--method",
    type=click.Choice(METHODS),
    default="entropy",
    show_default=True,
    help="INT8: how activation ranges are chosen (minmax, percentile, entropy/KL).",
)


@click.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--precision", type=click.Choice(["fp16", "int8"]), required=True, help="Target precision."
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write."
)
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(),
    help="INT8: calibration images (folders or files; repeatable).",
)
@method_option
@click.option("--max-images", type=int, default=512, show_default=True, help="INT8: image cap.")
@click.option(
    "--cache", type=click.Path(dir_okay=False), default=None, help="INT8: calibration cache JSON."
)
@click.option(
    "--keep-io-types/--no-keep-io-types",
    default=True,
    show_default=True,
    help="FP16: keep the graph inputs/outputs FP32.",
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def calibrate_command(
    model: str,
    precision: str,
    output: str,
    data: tuple[str, ...],
    method: str,
    max_images: int,
    cache: str | None,
    keep_io_types: bool,
    force: bool,
) -> None:
    """Convert the FP32 deploy graph MODEL to an FP16 graph (FP32 islands kept) or an INT8
    graph with calibrated Q/DQ nodes, for TensorRT's strongly typed builder."""
    from maskrt.fileio import check_writable

    check_writable(output, force)  # fail before the slow part
    if precision == "fp16":
        if data or cache:
            raise MaskrtError("--data and --cache apply to --precision int8 only")
        from .fp16 import calibrate_fp16

        click.echo(str(calibrate_fp16(model, output, keep_io_types=keep_io_types, force=force)))
        return
    if not data:
        raise MaskrtError("--precision int8 needs calibration images: pass --data DIR")
    from .int8 import quantize_to_int8

    summary = quantize_to_int8(
        model,
        output,
        list(data),
        method=method,
        max_images=max_images,
        cache=cache,
        force=force,
        show_progress=True,
    )
    click.echo(str(summary))


@click.command("validate")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="maskrt dataset root: evaluates on val/, calibrates INT8 on train/.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the artifacts and validation.{md,json} (default: a temporary folder).",
)
@click.option(
    "--tolerance",
    default=None,
    help="Allowed |ΔAP| in AP points, e.g. fp32=0.1,fp16=0.3,int8=1.5 (the defaults).",
)
@click.option("--calib-images", type=int, default=512, show_default=True, help="INT8 images.")
@method_option
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
def validate_command(
    checkpoint: str,
    data: str,
    out: str | None,
    tolerance: str | None,
    calib_images: int,
    method: str,
    limit: int | None,
) -> None:
    """Accuracy of every precision and backend against PyTorch FP32 as one table; exits
    non-zero when a ΔAP exceeds its tolerance (a CI gate)."""
    import tempfile

    from maskrt.validate import parse_tolerances, validate

    tolerances = parse_tolerances(tolerance)
    with tempfile.TemporaryDirectory(prefix="maskrt-validate-") as tmp:
        report = validate(
            checkpoint,
            data,
            out or tmp,
            tolerances=tolerances,
            calib_images=calib_images,
            limit=limit,
            method=method,
            show_progress=True,
        )
        click.echo(report.markdown())
        if out:
            click.echo(f"wrote {out}/validation.md and {out}/validation.json")
    if not report.passed:
        raise MaskrtError("validation failed: " + "; ".join(report.failures))
