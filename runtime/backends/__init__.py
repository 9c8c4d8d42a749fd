"""Backends behind :func:`maskrt.runtime.load_predictor`; each imports its engine lazily."""
