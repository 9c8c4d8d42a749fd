"""The `maskrt` command line: a thin layer of click verbs over the library functions.

Each verb lives in the ``cli.py`` of the package whose library it wraps and is registered here,
the one place. Failures on bad input are one line on stderr and a non-zero exit, never a
traceback; maskrt's own bugs (:class:`~maskrt.errors.InternalError`) say so, and how to get the
traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from maskrt.errors import DEBUG_ENV, InternalError, MaskrtError, missing_extra


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


class _Group(click.Group):
    """A click group that turns user-facing errors into one line and exit code 1, and reports
    maskrt's own bugs as bugs (the traceback with ``MASKRT_DEBUG`` set)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MaskrtError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except InternalError as e:  # our bug, not the user's input
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(
                f"Error: internal error in maskrt (a bug; please report it): {_first_line(e)} "
                f"(set {DEBUG_ENV}=1 for the traceback)",
                err=True,
            )
            sys.exit(1)
        except Exception as e:  # a bug or an unforeseen input: still one line, unless debugging
            if os.environ.get(DEBUG_ENV):
                raise
            # an optional stack this install leaves out
            missing = missing_extra(e, f"maskrt {ctx.invoked_subcommand}")
            if missing is not None:
                click.echo(f"Error: {missing}", err=True)
                sys.exit(1)
            click.echo(
                f"Error: unexpected {type(e).__name__}: {_first_line(e)} "
                f"(set {DEBUG_ENV}=1 for details)",
                err=True,
            )
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskrt")
def main() -> None:
    """Deploy torchvision Mask R-CNN family detectors to TensorRT, with proof in COCO AP."""


def _register() -> None:
    from maskrt.calibration.cli import calibrate_command
    from maskrt.export.cli import export_command
    from maskrt.plugins.surgery.cli import surgery_command
    from maskrt.runtime.cli import build_command, infer_command
    from maskrt.runtime.triton.cli import serve_command, triton_command
    from maskrt.training import cli as training_cli

    from . import cli as pipeline_cli

    stages = [export_command, calibrate_command, surgery_command, build_command, infer_command,
              triton_command, serve_command]  # fmt: skip
    for command in [*training_cli.COMMANDS, *stages, *pipeline_cli.COMMANDS]:
        main.add_command(command)


_register()
