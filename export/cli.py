"""``maskrt export``: checkpoint -> deploy-ready ONNX graph."""

from __future__ import annotations

import click

from maskrt.cliargs import (
    arch_option,
    factory_kwargs,
    force_option,
    model_factory_options,
    output_option,
)


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@output_option("ONNX file to write.")
@arch_option
@model_factory_options
@click.option("--batch", type=int, default=None, help="Fix the batch size (default: dynamic).")
@click.option("--height", type=int, default=None, help="Fix the input height (multiple of 32).")
@click.option("--width", type=int, default=None, help="Fix the input width (multiple of 32).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--compact-heads",
    is_flag=True,
    help="Run the mask/keypoint heads only on detected rows: faster in ONNX Runtime; "
    "data-dependent shapes inside (outputs stay padded). Default: static, for TensorRT.",
)
@force_option
@click.option(
    "--no-check",
    is_flag=True,
    help="Write the graph without comparing it with the eager model first.",
)
@click.option(
    "--check-images",
    "check_images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An image to run the check on instead of noise (repeat for several; real images "
    "give fewer near-ties).",
)
def export_command(
    checkpoint: str,
    output: str,
    arch: str | None,
    model_factory: str | None,
    factory_args: tuple[str, ...],
    batch: int | None,
    height: int | None,
    width: int | None,
    opset: int,
    compact_heads: bool,
    force: bool,
    no_check: bool,
    check_images: tuple[str, ...],
) -> None:
    """Export CHECKPOINT to a padded-output ONNX graph for deployment.

    The graph is compared with the eager model in ONNX Runtime before it is written."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.fileio import check_writable

    from .exporter import export_onnx

    check_writable(output, force)  # fail before the slow part
    spec, model = load_checkpoint(
        checkpoint, arch=arch, **factory_kwargs(model_factory, factory_args)
    )
    summary = export_onnx(
        model,
        output,
        spec=spec,
        batch=batch,
        height=height,
        width=width,
        opset=opset,
        compact_heads=compact_heads,
        force=force,
        check=not no_check,
        check_images=check_images,
    )
    click.echo(str(summary))
