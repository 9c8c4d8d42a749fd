"""``maskrt calibrate``: a thin click verb over the calibration library; ``--method`` is shared
with the pipeline verbs that calibrate INT8 (convert, validate)."""

from __future__ import annotations

import click

from maskrt.cliargs import calib_data_option, calib_images_option, force_option, output_option
from maskrt.errors import MaskrtError

from .methods import DEFAULT_METHOD, METHODS

# Shared by every verb that calibrates INT8 (calibrate, convert, validate).
method_option = click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="INT8: how activation ranges are chosen (minmax, percentile, entropy/KL).",
)

# Shared by calibrate and validate.
fp16_groups_option = click.option(
    "--fp16-groups",
    default=None,
    metavar="G,...",
    help="INT8: keep these groups out of INT8, in FP16 (backbone1.., backbone, fpn, rpn, box, "
    "mask, keypoint; found from the graph's structure).",
)


@click.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--precision", type=click.Choice(["fp16", "int8"]), required=True, help="Target precision."
)
@output_option("ONNX file to write.")
@calib_data_option(hidden_aliases=("--data",))
@method_option
@calib_images_option
@click.option(
    "--cache", type=click.Path(dir_okay=False), default=None, help="INT8: calibration cache JSON."
)
@fp16_groups_option
@click.option(
    "--keep-io-types/--no-keep-io-types",
    default=True,
    show_default=True,
    help="FP16: keep the graph inputs/outputs FP32.",
)
@force_option
def calibrate_command(
    model: str,
    precision: str,
    output: str,
    calib_data: tuple[str, ...],
    method: str,
    calib_images: int,
    cache: str | None,
    fp16_groups: str | None,
    keep_io_types: bool,
    force: bool,
) -> None:
    """Convert the FP32 deploy graph MODEL to an FP16 graph (FP32 islands kept) or an INT8
    graph with calibrated Q/DQ nodes, for TensorRT's strongly typed builder."""
    from maskrt.fileio import check_writable

    check_writable(output, force)  # fail before the slow part
    if precision == "fp16":
        if calib_data or cache or fp16_groups:
            raise MaskrtError(
                "--calib-data, --cache and --fp16-groups apply to --precision int8 only"
            )
        from .fp16 import calibrate_fp16

        click.echo(str(calibrate_fp16(model, output, keep_io_types=keep_io_types, force=force)))
        return
    if not calib_data:
        raise MaskrtError("--precision int8 needs calibration images: pass --calib-data DIR")
    from .int8 import quantize_to_int8

    summary = quantize_to_int8(
        model,
        output,
        list(calib_data),
        method=method,
        max_images=calib_images,
        cache=cache,
        force=force,
        show_progress=True,
        fp16_groups=fp16_groups or (),
    )
    click.echo(str(summary))
