"""Checkpoints that carry their model spec, and plain torchvision state_dicts.

A maskrt checkpoint is a dict saved with ``torch.save``::

    {"format": "maskrt-checkpoint", "version": 1, "spec": ModelSpec.to_dict(), "state_dict": {...}}

It loads with ``torch.load(weights_only=True)``. A plain torchvision ``state_dict`` loads too when
the caller names the spec (``arch=`` or a full ``ModelSpec``) or the user's own builder
(``factory="package.module:function"``, whose code is imported only when named so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import MaskrtError
from .fileio import atomic_path
from .specs import CUSTOM_ARCH, ModelSpec, SpecError, build_model, default_spec

CHECKPOINT_FORMAT = "maskrt-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], spec: ModelSpec | None, model: Any) -> Path:
    """Write ``model``'s weights and ``spec`` to ``path`` atomically.

    ``spec`` None reads it off the module (:func:`maskrt.introspect.spec_from_module`): a model
    assembled in Python is recorded as "custom" with no factory, so its checkpoint says that
    it can be exported but not rebuilt without the user's code.
    """
    import torch

    if spec is None:
        from .introspect import spec_from_module

        spec = spec_from_module(model)

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


def load_state(
    spec: ModelSpec,
    state_dict: dict[str, Any],
    source: str = "checkpoint",
    allow_factory: bool = False,
) -> Any:
    """A model built from ``spec`` with ``state_dict`` loaded strictly, in eval mode
    (``allow_factory``: see :func:`maskrt.specs.build_model`)."""
    try:
        model = build_model(spec, allow_factory=allow_factory)
    except SpecError as e:
        raise MaskrtError(f"{source}: {e}") from None
    problem = _describe_mismatch(model, state_dict)
    if problem:
        what = spec.name if spec.factory else f"{spec.arch} (num_classes={spec.num_classes})"
        raise MaskrtError(f"{source} does not fit {what}: {problem}")
    model.load_state_dict(state_dict)
    return model.eval()


def _factory_spec(spec: ModelSpec | None, model: Any, factory: str, args: dict[str, Any]) -> Any:
    """The spec of a factory-built ``model``: read off it; a recorded ``spec`` must agree."""
    from .introspect import reconcile, spec_from_module

    read = spec_from_module(model, factory=factory, factory_args=args)
    if spec is None:
        return read
    return reconcile(spec.replace(factory=factory, factory_args=args), read)


def checkpoint_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The spec a maskrt checkpoint carries, without building its model."""
    p = Path(path)
    payload = _read(p)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise MaskrtError(f"{p} is not a maskrt checkpoint (no model spec inside)")
    try:
        return ModelSpec.from_dict(payload["spec"])
    except (SpecError, TypeError, KeyError) as e:
        raise MaskrtError(f"{p} carries a bad model spec: {e}") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    spec: ModelSpec | None = None,
    factory: str | None = None,
    factory_args: dict[str, Any] | None = None,
) -> tuple[ModelSpec, Any]:
    """Load a maskrt checkpoint, or a plain state_dict when ``arch``, ``spec`` or ``factory``
    names the model.

    ``factory`` ("package.module:function", called with ``factory_args``) builds the model with
    the user's code; it is the only way such code is imported, also for a maskrt checkpoint
    that records a factory (the recorded arguments are used unless ``factory_args`` is given).
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
        if factory is not None:
            args = saved.factory_args if factory_args is None else factory_args
            built = load_state(
                saved.replace(factory=factory, factory_args=args),
                payload["state_dict"],
                source=str(p),
                allow_factory=True,
            )
            return _factory_spec(saved, built, factory, args), built
        if spec is None:
            # A new arch means its heads too, unless the caller's spec says otherwise.
            changes = dict(arch=arch, mask_head=None, keypoint_head=None) if arch else {}
            spec = saved.replace(**changes)
        return spec, load_state(spec, payload["state_dict"], source=str(p))
    # A plain state_dict (possibly wrapped as {"model": ...} like torchvision's reference scripts).
    state = payload.get("model", payload)
    if factory is not None:
        args = dict(factory_args or {})
        template = ModelSpec(arch=CUSTOM_ARCH, factory=factory, factory_args=args)
        built = load_state(template, state, source=str(p), allow_factory=True)
        return _factory_spec(spec, built, factory, args), built
    if spec is None:
        if arch is None:
            raise MaskrtError(
                f"{p} is a plain state_dict without a model spec; name its architecture with --arch"
            )
        spec = default_spec(arch, num_classes=_infer_num_classes(state, arch))
    return spec, load_state(spec, state, source=str(p))


def _infer_num_classes(state: dict[str, Any], arch: str) -> int:
    """num_classes from the box predictor's weight, so a fine-tuned torchvision checkpoint loads."""
    w = state.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None and hasattr(w, "shape"):
        return int(w.shape[0])
    return default_spec(arch).num_classes
