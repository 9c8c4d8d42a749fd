"""``maskrt export``: checkpoint -> deploy-ready ONNX graph."""

from __future__ import annotations

import click

from maskrt.specs import ARCHS


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write."
)
@click.option(
    "--arch", type=click.Choice(ARCHS), default=None, help="Architecture of a plain state_dict."
)
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
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
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
