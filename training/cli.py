"""``maskrt data shapes`` and ``maskrt train``: click verbs over :mod:`maskrt.training`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from maskrt.cliargs import F, data_option, force_option, output_option, seed_option
from maskrt.errors import MaskrtError

from .train import TrainConfig


def iters_option(default: int | None) -> Callable[[F], F]:
    """``--iters``: training iterations (``maskrt train``; ``maskrt demo --retrain``)."""
    return click.option(
        "--iters", type=click.IntRange(min=1), default=default, show_default=default is not None,
        help="Training iterations.",
    )  # fmt: skip


@click.group("data")
def data_group() -> None:
    """Make datasets."""


@data_group.command("shapes")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", default=1000, show_default=True, help="Training images.")
@click.option("--val", "n_val", default=200, show_default=True, help="Held-out images.")
@seed_option
@force_option
def shapes_command(out: str, n_train: int, n_val: int, seed: int, force: bool) -> None:
    """Write a synthetic COCO-format dataset of circles, squares and triangles to OUT."""
    from .shapes import make_shapes_dataset

    root = make_shapes_dataset(
        out, train=n_train, val=n_val, seed=seed, force=force, show_progress=True
    )
    click.echo(f"Wrote {n_train} train and {n_val} val images with COCO annotations to {root}")


@click.command("train")
@output_option("Checkpoint to write.")
@data_option
# The default recipe's length: what the shipped demo model was trained with (training/shipped.py).
@iters_option(TrainConfig.iters)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
    help="Images per training step.",
)  # fmt: skip
@seed_option
@force_option
def train_command(
    output: str, data: str | None, iters: int, batch_size: int, seed: int, force: bool
) -> None:
    """Train the demo Mask R-CNN (a narrow ResNet with a 3-level FPN) deterministically;
    without --data, on the synthetic shapes dataset it makes itself."""
    from maskrt.fileio import check_writable

    from .train import train_demo

    check_writable(output, force)
    if data is not None and not Path(data).is_dir():
        raise MaskrtError(f"dataset root {data} does not exist")
    cfg = TrainConfig(iters=iters, batch_size=batch_size, seed=seed)
    spec, path = train_demo(output, data_root=data, config=cfg, show_progress=True)
    click.echo(f"Wrote {path} ({spec.arch}, {spec.num_classes - 1} classes)")


COMMANDS = [data_group, train_command]
