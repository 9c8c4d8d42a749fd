"""The one CLI vocabulary: options that several verbs take, defined once with one meaning.

Every verb builds its options from these decorators, so an option has the same name, type and
help text wherever it appears (the model: Polygraphy's ``tools/args``). Options that belong to one
stage (``--method`` of calibration, ``--backend`` of the runtime) are defined once in that stage's
``cli.py`` and imported from there.

Spellings older releases used stay accepted for one release as hidden aliases (not shown in
``--help``): ``--out`` for ``-o/--output``, ``--max-images`` for ``--calib-images``, ``--data``
for ``--calib-data`` in ``maskrt calibrate``, ``--images`` for ``--num-images`` in ``maskrt bench``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from maskrt.errors import MaskrtError
from maskrt.specs import ARCHS, parse_factory_args

F = TypeVar("F", bound=Callable[..., Any])


class AliasedOption(click.Option):
    """A click option with extra spellings that it accepts but does not show in ``--help``."""

    def __init__(self, *args: Any, hidden_aliases: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def _shown(self) -> list[str]:
        return [o for o in self.opts if o not in self.hidden_aliases]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = self._shown()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self._shown())


def output_option(help: str, *, folder: bool = False, required: bool = True) -> Callable[[F], F]:
    """``-o/--output``: what the verb writes (a file, or a folder with ``folder=True``)."""
    return click.option(
        "-o",
        "--output",
        "--out",
        "output",
        cls=AliasedOption,
        hidden_aliases=("--out",),
        required=required,
        type=click.Path(file_okay=not folder, dir_okay=folder),
        help=help,
    )


force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")

arch_option = click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=None,
    help="Architecture of a plain torchvision state_dict (a maskrt checkpoint names its own).",
)


def model_factory_options(f: F) -> F:
    """``--model-factory`` and ``--factory-arg``: build the model with the user's own function
    (the only way maskrt imports user code)."""
    f = click.option(
        "--factory-arg",
        "factory_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="Keyword argument for --model-factory (a JSON value, else a string); repeatable.",
    )(f)
    return click.option(
        "--model-factory",
        default=None,
        metavar="MODULE:FUNCTION",
        help="Build the model by importing and calling your own function (package.module:function) "
        "and load the checkpoint's weights into it; recorded in what maskrt writes.",
    )(f)


def factory_kwargs(model_factory: str | None, factory_args: Sequence[str]) -> dict[str, Any]:
    """``load_checkpoint`` keyword arguments for the factory options (empty without one);
    without ``--factory-arg`` a checkpoint's recorded arguments apply."""
    if model_factory is None:
        if factory_args:
            raise MaskrtError("--factory-arg needs --model-factory")
        return {}
    args = parse_factory_args(factory_args) if factory_args else None
    return {"factory": model_factory, "factory_args": args}


def checkpoint_options(
    arch: str | None, model_factory: str | None, factory_args: Sequence[str]
) -> dict[str, Any]:
    """The torch backend's checkpoint options from ``--arch`` and the factory options."""
    return {**({"arch": arch} if arch else {}), **factory_kwargs(model_factory, factory_args)}


data_option = click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset root as `maskrt data shapes` writes it (train/ and val/, COCO format).",
)


def calib_data_option(*, hidden_aliases: Sequence[str] = ()) -> Callable[[F], F]:
    """``--calib-data``: INT8 calibration images (folders or files; repeatable)."""
    return click.option(
        "--calib-data",
        *hidden_aliases,
        "calib_data",
        cls=AliasedOption,
        hidden_aliases=hidden_aliases,
        multiple=True,
        type=click.Path(),
        help="INT8: calibration images (folders or files; repeatable).",
    )


calib_images_option = click.option(
    "--calib-images",
    "--max-images",
    "calib_images",
    cls=AliasedOption,
    hidden_aliases=("--max-images",),
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="INT8: calibrate on at most this many images.",
)

limit_option = click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images."
)

batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images per inference call.",
)


def max_batch_option(default: int = 1) -> Callable[[F], F]:
    """``--max-batch``: the largest batch an artifact will be run with."""
    return click.option(
        "--max-batch",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="Largest batch it will run with (TensorRT: the engine's optimisation profile; "
        "Triton: dynamic batching).",
    )


seed_option = click.option("--seed", default=0, show_default=True, help="Random seed.")

json_option = click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results as JSON to this file.",
)
