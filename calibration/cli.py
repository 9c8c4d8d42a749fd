"""``maskrt calibrate``: a thin click verb over the calibration library; ``--method`` is shared
with the pipeline verbs that calibrate INT8 (convert, validate)."""

from __future__ import annotations

from typing import Any

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


def max_ap_drop_option(help_text: str) -> Any:
    """``--max-ap-drop D`` (AP points): the INT8 budget of calibrate (search), validate (gate)."""
    return click.option("--max-ap-drop", type=float, default=None, metavar="D", help=help_text)


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
@max_ap_drop_option(
    "INT8: keep the fewest groups in FP16 so that the AP drop against the FP32 graph is "
    "within D AP points (bbox and segm), measured on --eval-data; writes MODEL.search.json "
    "beside the output."
)
@click.option(
    "--eval-data",
    type=click.Path(file_okay=False),
    default=None,
    help="With --max-ap-drop: dataset root whose val/ split (COCO format) is evaluated, half "
    "to choose the groups, half to report.",
)
@click.option(
    "--eval-images",
    type=click.IntRange(min=4),
    default=200,
    show_default=True,
    help="With --max-ap-drop: how many val images to evaluate.",
)
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
    max_ap_drop: float | None,
    eval_data: str | None,
    eval_images: int,
    keep_io_types: bool,
    force: bool,
) -> None:
    """Convert the FP32 deploy graph MODEL to an FP16 graph (FP32 islands kept) or an INT8
    graph with calibrated Q/DQ nodes, for TensorRT's strongly typed builder."""
    from maskrt.fileio import check_writable

    check_writable(output, force)  # fail before the slow part
    if precision == "fp16":
        if calib_data or cache or fp16_groups or max_ap_drop is not None or eval_data:
            raise MaskrtError(
                "--calib-data, --cache, --fp16-groups, --max-ap-drop and --eval-data apply to "
                "--precision int8 only"
            )
        from .fp16 import calibrate_fp16

        click.echo(str(calibrate_fp16(model, output, keep_io_types=keep_io_types, force=force)))
        return
    if not calib_data:
        raise MaskrtError("--precision int8 needs calibration images: pass --calib-data DIR")
    if max_ap_drop is not None:
        if fp16_groups:
            raise MaskrtError("give either --fp16-groups or --max-ap-drop, not both")
        if not eval_data:
            raise MaskrtError("--max-ap-drop needs annotated images: pass --eval-data DIR")
        from .search import report_path, search_fp16_groups

        report = search_fp16_groups(
            model, output, list(calib_data), eval_data, max_ap_drop, method=method,
            max_images=calib_images, eval_images=eval_images, cache=cache, force=force,
            show_progress=True,
        )  # fmt: skip
        click.echo(report.table())
        click.echo(f"wrote {output} and {report_path(output)}")
        return
    if eval_data:
        raise MaskrtError("--eval-data applies to --max-ap-drop only")
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
