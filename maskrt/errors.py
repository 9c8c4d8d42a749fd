"""maskrt's two kinds of failure, told apart as Polygraphy does (PolygraphyException vs
PolygraphyInternalException):

* :class:`MaskrtError`, the one root of user errors: bad input or an unmet precondition. The CLI
  prints the message as one line and exits non-zero, no traceback.
* :class:`InternalError`: maskrt's own bug (a graph it built fails its checks, a repository it
  wrote disagrees with itself). Not a MaskrtError, so no ``except MaskrtError`` swallows it; the
  CLI says it is a bug and how to get the traceback (:data:`DEBUG_ENV`).
"""

DEBUG_ENV = "MASKRT_DEBUG"  # set (to anything) for the traceback of an unexpected failure


class MaskrtError(Exception):
    """Bad input or an unmet precondition, explained in one line for the user."""


class InternalError(Exception):
    """A bug in maskrt, not in the user's input: reported as one, with how to get the traceback."""


# The extra of `pip install "maskrt[...]"` that brings each optional library (pyproject.toml's
# optional-dependencies): the base install is the runtime alone.
EXTRA_OF_MODULE = {
    "torch": "export",
    "torchvision": "export",
    "onnx_graphsurgeon": "export",
    "onnx": "cpu",
    "onnxruntime": "cpu",
    "onnxruntime_extensions": "cpu",
    "tensorrt": "trt",
    "pycuda": "trt",
    "tritonclient": "serve",
    "av": "video",
}


def missing_extra(error: BaseException, what: str) -> MaskrtError | None:
    """A one-line error naming the extra to install when ``error`` is a missing optional
    library; None for any other import failure. ``what`` is what needed it (a verb)."""
    if not isinstance(error, ImportError):
        return None
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MaskrtError(
        f'{what} needs {module}, which is not installed: pip install "maskrt[{extra}]"'
    )
