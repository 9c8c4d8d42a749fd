"""Reading and writing ONNX files, once for every stage (the model: Polygraphy's ONNX loader).

* :func:`load_onnx` -- a file to a ``ModelProto`` with a one-line error for anything else
  (missing, not ONNX, truncated, invalid, not a maskrt deploy graph when one is required);
  ``weights=False`` reads the graph without external weight files, for metadata and shapes.
* :func:`save_onnx` -- the ONNX checker, the IR version every supported ONNX Runtime reads, and
  an atomic write that refuses to overwrite without ``force``.
* :func:`metadata`, :func:`set_metadata`, :func:`spec_from_metadata` -- the deploy contract's
  ``metadata_props`` (:mod:`maskrt.contract`) and the model spec they carry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt import contract
from maskrt.errors import InternalError, MaskrtError
from maskrt.fileio import atomic_path, check_writable
from maskrt.specs import ModelSpec, SpecError

if TYPE_CHECKING:  # onnx is imported where a file is read, not on `import maskrt.onnxio`
    import onnx

# The IR version maskrt writes: ONNX Runtime 1.31 reads IR <= 13 and onnx's helpers default to
# newer ones; 10 holds everything the deploy graphs use.
IR_VERSION = 10

# Domains ONNX Runtime implements itself; any other domain is a custom (plugin) op.
BUILTIN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def load_onnx(
    path: str | os.PathLike[str],
    *,
    weights: bool = True,
    check: bool = False,
    deploy_graph: bool = False,
) -> onnx.ModelProto:
    """The ONNX model in ``path``, or a one-line :class:`MaskrtError` naming the file.

    ``weights=False`` leaves external weight files unread; ``check`` runs the ONNX checker;
    ``deploy_graph`` requires the maskrt deploy contract's model spec in the metadata.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise MaskrtError(f"{p} does not exist")
    try:
        model = onnx.load(os.fspath(p), load_external_data=weights)
    except DecodeError:
        raise MaskrtError(f"{p} is not an ONNX model, or it is truncated") from None
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise a variety of errors
        raise MaskrtError(f"{p} is not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise MaskrtError(f"{p} is not an ONNX model with a graph (empty or truncated file)")
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MaskrtError(f"{p} is not a valid ONNX model: {first}") from None
    if deploy_graph and contract.META_MODEL_SPEC not in metadata(model):
        raise MaskrtError(f"{p} is not a maskrt deploy graph (no {contract.META_MODEL_SPEC})")
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Check ``model`` with the ONNX checker, cap its IR version at :data:`IR_VERSION` and write
    it to ``path`` atomically; refuse to overwrite an existing file unless ``force``."""
    import onnx

    target = check_writable(path, force)
    model.ir_version = min(model.ir_version, IR_VERSION) or IR_VERSION
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InternalError(f"the graph for {target} fails the ONNX checker: {first}") from e
    with atomic_path(target) as tmp:
        onnx.save(model, os.fspath(tmp))
    return target


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, **values: str) -> None:
    """Add or replace ``metadata_props`` entries, keeping the others."""
    from onnx import helper

    meta = metadata(model)
    meta.update(values)
    helper.set_model_props(model, meta)


def spec_from_metadata(meta: Mapping[str, str], source: str) -> ModelSpec:
    """The ModelSpec an exported graph carries; refuses graphs of another contract version."""
    if contract.META_MODEL_SPEC not in meta:
        raise MaskrtError(f"{source} is not a maskrt deploy graph (no {contract.META_MODEL_SPEC})")
    version = meta.get(contract.META_CONTRACT_VERSION)
    if version != contract.CONTRACT_VERSION:
        raise MaskrtError(
            f"{source} follows deploy contract {version}; this maskrt reads "
            f"{contract.CONTRACT_VERSION} (re-export it)"
        )
    try:
        return ModelSpec.from_json(meta[contract.META_MODEL_SPEC])
    except (SpecError, ValueError, TypeError) as e:
        raise MaskrtError(f"{source} carries a bad model spec: {e}") from None


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec of the deploy graph in ``path`` (weights not read)."""
    return spec_from_metadata(metadata(load_onnx(path, weights=False)), os.fspath(path))


def custom_op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of the main graph that neither ONNX Runtime nor a local function defines
    (maskrt's plugin nodes after surgery)."""
    # Ops defined by a local ONNX function (the exporter's MultiScaleRoIAlign) run as is.
    local = {(f.domain, f.name) for f in model.functions}
    return {
        n.op_type
        for n in model.graph.node
        if n.domain not in BUILTIN_DOMAINS and (n.domain, n.op_type) not in local
    }


def read_graph_facts(path: str | os.PathLike[str]) -> tuple[dict[str, str], set[str]]:
    """(metadata_props, custom op types) of an ONNX file, without loading its weights."""
    model = load_onnx(path, weights=False)
    return metadata(model), custom_op_types(model)
