"""maskrt.training: the synthetic shapes dataset and the small demo Mask R-CNN trained on it.

Nothing of the deploy path depends on this package; the pipeline uses it to make the demo's
dataset and model (``maskrt demo``) and the tests use it for their cached model.
"""
