"""ONNX Runtime backend: runs a maskrt deploy graph (plain or with plugin nodes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskrt import contract
from maskrt.errors import MaskrtError
from maskrt.onnxio import custom_op_types, load_onnx, metadata, spec_from_metadata


def _plugin_session(path: Path, model: Any) -> tuple[Any, str | bytes]:
    """SessionOptions with maskrt's plugin ops registered for the CPU (maskrt.plugins.ort), and
    the graph rewritten in memory for them (:func:`maskrt.plugins.ort.ort_rewrite`; the file,
    TensorRT's input, is not changed). ``model`` is the file's graph without its external
    weights.
    """
    import onnx

    try:
        from maskrt.plugins.ort import ort_rewrite, ort_session_options
    except ImportError as e:
        raise MaskrtError(
            f"this graph holds maskrt plugin nodes but their ONNX Runtime ops cannot load ({e})"
        ) from None
    options = ort_session_options()
    if not ort_rewrite(model):
        return options, os.fspath(path)
    onnx.load_external_data_for_model(model, os.fspath(path.parent))
    return options, model.SerializeToString()


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) else None


class OrtRunner:
    """Runs a deploy graph's ``(images, image_sizes) -> outputs`` with ONNX Runtime."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        optimization: str | None = None,
    ) -> None:
        """``optimization``: ONNX Runtime's graph optimisation level, ``basic``, ``extended`` or
        ``all`` (its default). ``extended`` leaves out the layout transformations, whose kernel
        choice per convolution depends on the graph around it: two graphs that differ only in a
        RoIAlign unit then run the same kernels and give the same bits."""
        import onnxruntime as ort

        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization is not None and optimization not in levels:
            raise MaskrtError(
                f"unknown ONNX Runtime optimization level {optimization!r}; "
                f"expected one of {', '.join(levels)}"
            )

        self.path = Path(path)
        graph = load_onnx(self.path, weights=False)
        meta = metadata(graph)
        self.spec = spec_from_metadata(meta, str(self.path))
        self.surgered = meta.get(contract.META_SURGERED) == "1" or bool(custom_op_types(graph))
        source: str | bytes = os.fspath(self.path)
        options = ort.SessionOptions()
        if self.surgered:
            options, source = _plugin_session(self.path, graph)
        del graph
        if threads:
            options.intra_op_num_threads = threads
        if optimization is not None:
            options.graph_optimization_level = levels[optimization]
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        try:
            self.session = ort.InferenceSession(
                source, sess_options=options, providers=list(providers)
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MaskrtError(f"ONNX Runtime cannot load {self.path}: {first}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = {contract.INPUT_IMAGES, contract.INPUT_IMAGE_SIZES}
        if set(inputs) != expected:
            raise MaskrtError(
                f"{self.path} has inputs {sorted(inputs)}, the deploy contract {sorted(expected)}"
            )
        shape = inputs[contract.INPUT_IMAGES].shape
        self.max_batch_size = _static(shape[0])
        h, w = _static(shape[2]), _static(shape[3])
        self.fixed_size = (h, w) if h is not None and w is not None else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        wanted = contract.output_names(self.spec.has_masks, self.spec.has_keypoints)
        if tuple(self.output_names) != wanted:
            raise MaskrtError(
                f"{self.path} has outputs {self.output_names}, expected {list(wanted)}"
            )

    def __call__(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {
            contract.INPUT_IMAGES: np.ascontiguousarray(images, np.float32),
            contract.INPUT_IMAGE_SIZES: np.ascontiguousarray(image_sizes, np.int32),
        }
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None
