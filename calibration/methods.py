"""The INT8 calibration methods maskrt offers, importable without onnx (the CLI lists them)."""

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "entropy"
