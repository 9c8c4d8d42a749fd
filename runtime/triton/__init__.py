"""maskrt.runtime.triton: serving maskrt behind NVIDIA Triton Inference Server.

* :func:`write_repository` -- a Triton model repository for a deploy artifact
  (``maskrt triton``); its README.md documents the inputs and outputs.
* :class:`TritonServer` -- a local ``tritonserver`` on a repository (``maskrt serve``): the one on
  PATH or the one in the ``nvidia-pytriton`` wheel, started, waited for, stopped cleanly.
* :mod:`.python_model` -- the Python-backend model the repository's detector runs.

* :mod:`.layout` -- the two layouts (the python detector; the ensemble around Triton's own
  TensorRT / ONNX Runtime backend) and their names; :mod:`.tensors` -- the request and response
  tensors; :mod:`.facts`, :mod:`.configs`, :mod:`.readme` -- what the writer reads and writes;
  :func:`check_repository` (:mod:`.check`: configs parsed with Triton's ModelConfig, checked
  against each other and the artifact).

The ``python`` detector is one Python-backend model running maskrt's own
:class:`~maskrt.runtime.Predictor` (any backend); the ensemble is pre-processing (Python) ->
``tensorrt_plan`` / ``onnxruntime_onnx`` -> post-processing (Python). Both answer the same
requests with the same tensors.
"""

from .check import check_repository
from .repository import write_repository
from .server import TritonServer, find_tritonserver
from .tensors import REQUEST_INPUT

__all__ = [
    "REQUEST_INPUT",
    "TritonServer",
    "check_repository",
    "find_tritonserver",
    "write_repository",
]
