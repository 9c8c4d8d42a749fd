"""The thin TensorRT layer: engine build (:mod:`.build`) and execution (:mod:`.engine`).

Everything TensorRT-facing lives here and passes ``mypy --strict`` against tensorrt-stubs;
pycuda calls are isolated in :mod:`._cuda`. Importing this package does not import TensorRT.
"""
