"""The `maskrt` command line: a thin layer of click verbs over the library functions.

Each stage keeps its verbs in its own ``cli.py`` and they are registered here. Failures on bad
input are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .errors import MaskrtError


class _Group(click.Group):
    """A click group that turns user-facing errors into one line and exit code 1."""

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
        except Exception as e:  # a bug or an unforeseen input: still one line, unless debugging
            if os.environ.get("MASKRT_DEBUG"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(
                f"Error: unexpected {type(e).__name__}: {first} (set MASKRT_DEBUG=1 for details)",
                err=True,
            )
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskrt")
def main() -> None:
    """Deploy torchvision Mask R-CNN family detectors to TensorRT, with proof in COCO AP."""


def _register() -> None:
    from . import commands
    from .export.cli import export_command
    from .plugins.surgery_cli import surgery_command
    from .runtime.cli import build_command, infer_command

    stage_commands = [export_command, surgery_command, build_command, infer_command]
    from .calibration.cli import calibrate_command, validate_command

    stage_commands += [calibrate_command, validate_command]
    for command in [*commands.COMMANDS, *stage_commands]:
        main.add_command(command)


_register()
