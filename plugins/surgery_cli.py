"""``maskrt surgery``: the command-line verb over :func:`maskrt.plugins.surgery.surgery_file`."""

from __future__ import annotations

import click


@click.command("surgery")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="Surgered ONNX to write."
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def surgery_command(model: str, out: str, force: bool) -> None:
    """Swap each RoIAlign unit of MODEL for the maskrt TensorRT plugin node; write OUT.

    MODEL is a graph from `maskrt export` (maskrt::MultiScaleRoIAlign units) or a plain
    torch.onnx.export of a torchvision detector (per-level RoiAlign nodes).
    """
    from .surgery import surgery_file

    report = surgery_file(model, out, force=force, progress=True)
    for line in report.lines():
        click.echo(line)
    click.echo(f"Wrote {out}")
