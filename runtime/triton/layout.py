"""The layout of a maskrt Triton repository: its models, folders and file names, written once
here for the writer (:mod:`.repository`) and the models that read them back (:mod:`.python_model`).

Two layouts answer the same requests with the same tensors:

* ``python`` detector: one Python-backend model that decodes encoded images, runs maskrt's
  :class:`~maskrt.runtime.Predictor` (any backend) on the artifact copied into it and answers
  with detections in original-image pixels; each execution's images are predicted as one batch.
  The only layout the Triton build this workplace installs can run (it has no GPU backends).
* ``tensorrt`` / ``onnxruntime`` detector: an ensemble of pre-processing, the artifact on
  Triton's own TensorRT or ONNX Runtime backend, and post-processing (below).

Both answer one image per request with the tensors of :mod:`.tensors`, the one table of them.

The ensemble: pre-processing (Python backend) -> the detector on Triton's own backend
(``tensorrt_plan`` for an engine, ``onnxruntime_onnx`` for a deploy graph) -> post-processing
(Python backend); clients do not see which layout answers. The steps, after Triton's batch
dimension::

    NAME_pre       image UINT8 [-1] (encoded file)    -> images FP32 [3, H, W] (canvas),
                                                         image_sizes INT32 [2],
                                                         original_size INT32 [2]
    NAME_detector  images, image_sizes                -> the deploy contract's outputs
                                                         (num_detections as [1], reshaped to the
                                                         graph's [B])
    NAME_post      detector outputs, image_sizes,     -> the response tensors
                   original_size

The detector batches requests only when their tensors have one shape, so pre-processing pads every
image to one canvas (H, W): the graph's static size, else the spec's ``fixed_size``, else
``max_size`` squared, rounded up to 32. Padding changes a two-stage detector's answer a little,
as torchvision's own batching does (it pads a batch to its largest image): the RPN ranks the
anchors over the padded area too, and the backbone's border features see more padding. The
answers equal the Predictor's padding to the same canvas (tests/test_triton.py); a canvas costs
compute for images of another aspect ratio.

A TensorRT engine that uses maskrt's plugin needs the plugin library in the server: the
repository carries it in the detector's folder, beside its config.pbtxt, and Triton loads it with
``--backend-config=tensorrt,plugins=<path>``: the TensorRT backend only opens each listed
library, so it is the self-registering ``libmaskrt_roialign_trt_autoreg.so``, linked to
libnvinfer (which library each loader takes: plugins/multilevel_roialign/README.md#loading).
Not in a folder of the repository's root: Triton 2.51 takes every one of those for a model and
stops at start on one it cannot load. Read in triton-inference-server's sources of branch
r24.10 (Triton 2.51): core src/model_repository_manager/model_repository_manager.cc:1301-1312
(every subfolder of the root is a model), src/model_repository_manager/model_lifecycle.cc:92-113
(inside a model, only numeric subfolders are versions; files are not looked at),
tensorrt_backend src/tensorrt.cc:134-153 (each ``;``-separated ``plugins`` path is opened at
the backend's initialization) and its README.md (the ``plugins`` option); tested on the real
server with a stand-in library (tests/test_triton.py).
"""

from __future__ import annotations

SPEC_FILE = "maskrt_spec.json"  # the model spec beside a pre/post-processing model
STEP_SUFFIXES = ("_pre", "_detector", "_post")  # ensemble NAME's step models: NAME + suffix
PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}
MODEL_FILES = {"tensorrt": "model.plan", "onnxruntime": "model.onnx"}  # Triton's default names


def plugin_folder(name: str) -> str:
    """The repository folder holding the TensorRT plugin library of ensemble ``name``: its
    detector model's folder, beside config.pbtxt. Triton takes every folder of the repository's
    root for a model (a ``plugins/`` folder there stops the server at start) and only the
    numeric folders inside a model's folder for versions; plain files there it leaves alone."""
    return name + STEP_SUFFIXES[1]
