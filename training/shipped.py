"""The demo model that ships with maskrt: a checkpoint ``maskrt train`` wrote, and its record.

``pretrained/demo_maskrcnn_v2.pt`` was trained by ``maskrt train`` with the default recipe
(:class:`~maskrt.training.train.TrainConfig`) on the demo's dataset (``maskrt data shapes`` with
the demo's sizes and seed). ``demo_maskrcnn_v2.json`` beside it records the commands, the recipe,
the machine, the held-out AP and the file's SHA-256, which is checked before the file is used.
``maskrt demo --retrain`` trains the same recipe on the user's machine: the same model, not the
same bits (float sums depend on the CPU's kernels and the thread count).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from maskrt.errors import MaskrtError
from maskrt.fileio import sha256_file
from maskrt.specs import DEMO_ARCH

from .train import TrainConfig

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

_REPAIR = "reinstall maskrt, or train it here with `maskrt demo --retrain`"


def demo_record(directory: Path = PRETRAINED_DIR) -> dict[str, Any]:
    """The shipped demo checkpoint's record (``<DEMO_ARCH>.json`` in ``directory``)."""
    path = directory / f"{DEMO_ARCH}.json"
    try:
        record = json.loads(path.read_text())
        record["file"], record["sha256"], record["recipe"]  # noqa: B018 - the keys read below
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaskrtError(
            f"the shipped demo model's record {path} is missing or unreadable "
            f"({type(e).__name__}); {_REPAIR}"
        ) from None
    return record


def demo_recipe(record: dict[str, Any]) -> TrainConfig:
    """The recipe the shipped checkpoint was trained with, as a TrainConfig."""
    return TrainConfig(**record["recipe"])


def shipped_demo_checkpoint(directory: Path = PRETRAINED_DIR) -> Path:
    """The shipped demo checkpoint once its SHA-256 matched the record's; a one-line
    MaskrtError when it is missing or differs (a damaged or replaced file)."""
    record = demo_record(directory)
    path = directory / record["file"]
    if not path.is_file():
        raise MaskrtError(f"the shipped demo model {path} is missing; {_REPAIR}")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise MaskrtError(
            f"the shipped demo model {path} is not the recorded one (SHA-256 {digest[:12]}..., "
            f"recorded {record['sha256'][:12]}...); {_REPAIR}"
        )
    return path


def recipe_is_default(record: dict[str, Any]) -> bool:
    """Whether ``maskrt train``'s defaults are the recipe the record names (so that
    ``maskrt demo --retrain`` makes the shipped model again)."""
    return dataclasses.asdict(TrainConfig()) == record["recipe"]
