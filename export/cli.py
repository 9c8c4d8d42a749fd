"""``maskrt export``: checkpoint -> deploy-ready ONNX graph."""

from __future__ import annotations

import click

from maskrt.cliargs import arch_option, force_option, output_option


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@output_option("ONNX file to write.")
@arch_option
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
def export_command(
    checkpoint: str,
    output: str,
    arch: str | None,
    batch: int | None,
    height: int | None,
    width: int | None,
    opset: int,
    compact_heads: bool,
    force: bool,
) -> None:
    """Export CHECKPOINT to a padded-output ONNX graph for deployment."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.fileio import check_writable

    from .exporter import export_onnx

    check_writable(output, force)  # fail before the slow part
    spec, model = load_checkpoint(checkpoint, arch=arch)
    summary = export_onnx(
        spec,
        model,
        output,
        batch=batch,
        height=height,
        width=width,
        opset=opset,
        compact_heads=compact_heads,
        force=force,
    )
    click.echo(str(summary))
