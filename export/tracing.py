"""The one place that calls PyTorch's ONNX exporter (TorchScript-based, ``dynamo=False``).

Moving to ``dynamo=True`` later should only touch this module.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from maskrt.plugins.contract import UNIT_DOMAIN, UNIT_DOMAIN_VERSION


def trace_to_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    """Trace ``module`` on ``example_inputs`` and return the ONNX model (not yet checked)."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python values are expected: shapes we use are constants.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            buf,  # type: ignore[arg-type]  # file-like objects are accepted
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            custom_opsets={UNIT_DOMAIN: UNIT_DOMAIN_VERSION},
            dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())
