"""Checkpoints that carry their model spec, and plain torchvision state_dicts.

A maskrt checkpoint is a dict saved with ``torch.save``::

    {"format": "maskrt-checkpoint", "version": 1, "spec": ModelSpec.to_dict(), "state_dict": {...}}

It loads with ``torch.load(weights_only=True)``. A plain torchvision ``state_dict`` loads too when
the caller names the spec (``arch=`` or a full ``ModelSpec``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import MaskrtError
from .fileio import atomic_path
from .specs import ModelSpec, SpecError, build_model, default_spec

CHECKPOINT_FORMAT = "maskrt-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], spec: ModelSpec, model: Any) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically."""
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _read(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise MaskrtError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises anything (KeyError, struct.error, ...) on junk
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MaskrtError(f"{path} is not a loadable PyTorch checkpoint ({first})") from None


def _describe_mismatch(model: Any, state_dict: dict[str, Any]) -> str | None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if hasattr(state_dict[k], "shape")
        and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ):
        if items:
            shown = ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
            parts.append(f"{label} keys: {shown}")
    return "; ".join(parts) or None


def load_state(spec: ModelSpec, state_dict: dict[str, Any], source: str = "checkpoint") -> Any:
    """A model built from ``spec`` with ``state_dict`` loaded strictly, in eval mode."""
    model = build_model(spec)
    problem = _describe_mismatch(model, state_dict)
    if problem:
        raise MaskrtError(
            f"{source} does not fit {spec.arch} (num_classes={spec.num_classes}): {problem}"
        )
    model.load_state_dict(state_dict)
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike[str], arch: str | None = None, spec: ModelSpec | None = None
) -> tuple[ModelSpec, Any]:
    """Load a maskrt checkpoint, or a plain state_dict when ``arch`` or ``spec`` names the model.

    Returns ``(spec, model)`` with the model in eval mode on the CPU.
    """
    p = Path(path)
    payload = _read(p)
    if not isinstance(payload, dict):
        raise MaskrtError(f"{p} holds a {type(payload).__name__}, not a checkpoint dict")
    if payload.get("format") == CHECKPOINT_FORMAT:
        if payload.get("version") != CHECKPOINT_VERSION:
            raise MaskrtError(
                f"{p} has checkpoint version {payload.get('version')}; "
                f"this maskrt reads {CHECKPOINT_VERSION}"
            )
        try:
            saved = ModelSpec.from_dict(payload["spec"])
        except (SpecError, TypeError) as e:
            raise MaskrtError(f"{p} carries a bad model spec: {e}") from None
        if spec is None:
            spec = saved if arch is None else saved.replace(arch=arch)
        return spec, load_state(spec, payload["state_dict"], source=str(p))
    # A plain state_dict (possibly wrapped as {"model": ...} like torchvision's reference scripts).
    state = payload.get("model", payload)
    if spec is None:
        if arch is None:
            raise MaskrtError(
                f"{p} is a plain state_dict without a model spec; name its architecture with --arch"
            )
        try:
            spec = default_spec(arch, num_classes=_infer_num_classes(state, arch))
        except SpecError as e:
            raise MaskrtError(str(e)) from None
    return spec, load_state(spec, state, source=str(p))


def _infer_num_classes(state: dict[str, Any], arch: str) -> int:
    """num_classes from the box predictor's weight, so a fine-tuned torchvision checkpoint loads."""
    w = state.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None and hasattr(w, "shape"):
        return int(w.shape[0])
    return default_spec(arch).num_classes
