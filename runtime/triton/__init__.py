"""maskrt.runtime.triton: serving maskrt behind NVIDIA Triton Inference Server.

* :func:`write_repository` -- a Triton model repository for a deploy artifact
  (``maskrt triton``); its README.md documents the inputs and outputs.
* :class:`TritonServer` -- a local ``tritonserver`` on a repository (``maskrt serve``): the one on
  PATH or the one in the ``nvidia-pytriton`` wheel, started, waited for, stopped cleanly.
* :mod:`.python_model` -- the Python-backend model the repository's detector runs.

This first version writes the ``python`` detector: one Python-backend model that runs maskrt's
own :class:`~maskrt.runtime.Predictor` (any backend) on encoded images, with Triton's dynamic
batching. The ensembles with a ``tensorrt_plan`` or ``onnxruntime_onnx`` detector are not
written yet.
"""

from .repository import REQUEST_INPUT, write_repository
from .server import TritonServer, find_tritonserver

__all__ = [
    "REQUEST_INPUT",
    "TritonServer",
    "find_tritonserver",
    "write_repository",
]
