"""``maskrt surgery``: the command-line verb over :func:`maskrt.plugins.surgery.surgery_file`."""

from __future__ import annotations

import click

from maskrt.cliargs import force_option, output_option

from . import surgery_file


@click.command("surgery")
@click.argument("model", type=click.Path(dir_okay=False))
@output_option("Surgered ONNX file to write.")
@force_option
def surgery_command(model: str, output: str, force: bool) -> None:
    """Swap each RoIAlign unit of MODEL for the maskrt TensorRT plugin node; write the result to
    OUTPUT.

    MODEL is a graph from `maskrt export` (maskrt::MultiScaleRoIAlign units) or a plain
    torch.onnx.export of a torchvision detector (per-level RoiAlign nodes).
    """
    report = surgery_file(model, output, force=force, progress=True)
    for line in report.lines():
        click.echo(line)
    click.echo(f"Wrote {output}")
