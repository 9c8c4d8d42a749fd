"""The JSON file beside every engine (``model.engine`` -> ``model.engine.json``).

A TensorRT engine only runs with the TensorRT version and GPU architecture it was built for and,
when it holds plugin nodes, with the same plugin library. The sidecar records those facts (plus
provenance: source ONNX hash, precision, profiles, I/O contract, model spec) so that the runtime
refuses a mismatch with a clear message *before* TensorRT reads the engine. Everything here is
pure: the facts of the current machine are passed in, so it is testable without TensorRT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_write_text
from maskrt.specs import ModelSpec, SpecError

SIDECAR_FORMAT = "maskrt-engine"
SIDECAR_SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"

# name -> (min, opt, max) shape
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class MachineFacts:
    """What decides whether an engine can run here."""

    tensorrt_version: str  # e.g. "10.13.0.35"
    gpu_name: str
    compute_capability: tuple[int, int]
    plugin_sha256: str | None  # None: no plugin library available


@dataclass(frozen=True)
class Sidecar:
    """Facts about one engine file; ``to_dict`` is the JSON schema (version 1)."""

    machine: MachineFacts
    onnx_sha256: str
    engine_sha256: str
    precision: str
    profiles: tuple[Profile, ...]
    spec: ModelSpec
    uses_plugins: bool
    io: tuple[contract.TensorSpec, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "schema_version": SIDECAR_SCHEMA_VERSION,
            "tensorrt_version": self.machine.tensorrt_version,
            "gpu_name": self.machine.gpu_name,
            "compute_capability": list(self.machine.compute_capability),
            "plugin_sha256": self.machine.plugin_sha256 if self.uses_plugins else None,
            "uses_plugins": self.uses_plugins,
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "precision": self.precision,
            "contract_version": contract.CONTRACT_VERSION,
            "io": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.io],
            "profiles": [
                {name: [list(s) for s in shapes] for name, shapes in p.items()}
                for p in self.profiles
            ],
            "model_spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sidecar") -> Sidecar:
        if d.get("format") != SIDECAR_FORMAT:
            raise MaskrtError(f"{source} is not a maskrt engine sidecar")
        if d.get("schema_version") != SIDECAR_SCHEMA_VERSION:
            raise MaskrtError(
                f"{source} has sidecar schema {d.get('schema_version')}; this maskrt reads "
                f"{SIDECAR_SCHEMA_VERSION} (rebuild the engine)"
            )
        if d.get("contract_version") != contract.CONTRACT_VERSION:
            raise MaskrtError(
                f"{source}: engine follows deploy contract {d.get('contract_version')}, this "
                f"maskrt {contract.CONTRACT_VERSION} (re-export and rebuild)"
            )
        try:
            cc = d["compute_capability"]
            machine = MachineFacts(
                tensorrt_version=str(d["tensorrt_version"]),
                gpu_name=str(d["gpu_name"]),
                compute_capability=(int(cc[0]), int(cc[1])),
                plugin_sha256=d["plugin_sha256"],
            )
            profiles = tuple(
                {
                    name: tuple(tuple(int(v) for v in s) for s in shapes)
                    for name, shapes in p.items()
                }
                for p in d["profiles"]
            )
            io = tuple(
                contract.TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["io"]
            )
            return cls(
                machine=machine,
                onnx_sha256=str(d["onnx_sha256"]),
                engine_sha256=str(d["engine_sha256"]),
                precision=str(d["precision"]),
                profiles=profiles,  # type: ignore[arg-type]
                spec=ModelSpec.from_dict(d["model_spec"]),
                uses_plugins=bool(d["uses_plugins"]),
                io=io,
            )
        except (KeyError, TypeError, ValueError, IndexError, SpecError) as e:
            raise MaskrtError(
                f"{source} is a malformed engine sidecar ({type(e).__name__}: {e})"
            ) from None


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: str | os.PathLike[str], sidecar: Sidecar) -> Path:
    path = sidecar_path(engine_path)
    atomic_write_text(path, json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(engine_path: str | os.PathLike[str]) -> Sidecar:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise MaskrtError(
            f"{engine_path} has no sidecar {path.name}; build engines with `maskrt build`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MaskrtError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise MaskrtError(f"{path} is not a maskrt engine sidecar")
    return Sidecar.from_dict(data, source=str(path))


def _release(version: str) -> tuple[str, ...]:
    """major.minor.patch: engines are not portable across TensorRT releases."""
    return tuple(version.split(".")[:3])


def check_compatible(
    sidecar: Sidecar, here: MachineFacts, engine_sha256: str | None = None
) -> None:
    """Refuse, with the reason in one line, an engine that cannot run on machine ``here``."""
    built = sidecar.machine
    if _release(built.tensorrt_version) != _release(here.tensorrt_version):
        raise MaskrtError(
            f"engine was built with TensorRT {built.tensorrt_version}, this machine has "
            f"{here.tensorrt_version}; rebuild it here with `maskrt build`"
        )
    if built.compute_capability != here.compute_capability:
        b, h = built.compute_capability, here.compute_capability
        raise MaskrtError(
            f"engine was built for compute capability {b[0]}.{b[1]} ({built.gpu_name}), this GPU "
            f"is {h[0]}.{h[1]} ({here.gpu_name}); rebuild it here with `maskrt build`"
        )
    if sidecar.uses_plugins:
        if here.plugin_sha256 is None:
            raise MaskrtError("engine uses maskrt plugins but the plugin library is not built here")
        if built.plugin_sha256 != here.plugin_sha256:
            raise MaskrtError(
                "engine was built against a different maskrt plugin library "
                f"(sha256 {str(built.plugin_sha256)[:12]}, here {here.plugin_sha256[:12]}); "
                "rebuild it with `maskrt build`"
            )
    if engine_sha256 is not None and engine_sha256 != sidecar.engine_sha256:
        raise MaskrtError("engine file does not match its sidecar (sha256 differs); rebuild it")
