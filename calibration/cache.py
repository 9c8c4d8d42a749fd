"""The calibration cache: per-tensor ranges as JSON, keyed by what produced them.

A cache holds ONNX Runtime's ``TensorsData`` (lowest/highest per tensor, the histograms dropped)
together with the SHA-256 of the FP32 graph, the SHA-256 of the calibration images and the
method and its settings. :func:`read_cache` returns the ranges only when every key matches;
otherwise it says why (the caller recalibrates and rewrites the cache), so a stale cache is never
used silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maskrt.fileio import atomic_write_text

CACHE_FORMAT = "maskrt-calibration-cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """What calibration ranges depend on."""

    model_sha256: str
    data_sha256: str
    method: str
    settings: str  # the calibrator options, as sorted JSON

    def differences(self, other: CacheKey) -> list[str]:
        """Human words for the fields in which ``other`` differs from this key."""
        words = {
            "model_sha256": "the model changed",
            "data_sha256": "the calibration images changed",
            "method": f"method {other.method} != {self.method}",
            "settings": "the calibrator settings changed",
        }
        return [w for f, w in words.items() if getattr(self, f) != getattr(other, f)]


def _ranges_only(tensors: Any) -> Any:
    """``TensorsData`` with just lowest/highest per tensor (histograms are large, unused)."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {
        k: TensorData(lowest=v.range_value[0], highest=v.range_value[1]) for k, v in tensors.items()
    }
    return TensorsData(tensors.calibration_method, data)


def write_cache(path: str | os.PathLike[str], key: CacheKey, tensors: Any, info: dict) -> None:
    """Store ``tensors`` (ORT ``TensorsData``) under ``key`` in ``path``, atomically."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="maskrt-cache-") as tmp:
        ort_file = Path(tmp) / "ranges.json"
        save_tensors_data(_ranges_only(tensors), ort_file)
        ranges = json.loads(ort_file.read_text())
    payload = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": asdict(key),
        "info": info,
        "ranges": ranges,
    }
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True))


def read_cache(path: str | os.PathLike[str], key: CacheKey) -> tuple[Any | None, str]:
    """``(TensorsData, "")`` when ``path`` holds ranges for ``key``; else ``(None, reason)``."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    p = Path(path)
    if not p.is_file():
        return None, f"no cache at {p}"
    try:
        payload = json.loads(p.read_text())
        if payload.get("format") != CACHE_FORMAT or payload.get("version") != CACHE_VERSION:
            return None, f"{p} is not a maskrt calibration cache of version {CACHE_VERSION}"
        stored = CacheKey(**payload["key"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{p} is unreadable as a calibration cache ({type(e).__name__})"
    diff = stored.differences(key)
    if diff:
        return None, f"cache {p} is stale: {', '.join(diff)}"
    with tempfile.TemporaryDirectory(prefix="maskrt-cache-") as tmp:
        ort_file = Path(tmp) / "ranges.json"
        ort_file.write_text(json.dumps(payload["ranges"]))
        return load_tensors_data(ort_file), ""
