"""maskrt.pipeline: the orchestration above the stages, and the command line on top of it.

``convert`` chains export -> precision -> surgery -> build; ``validate`` proves each artifact in
COCO AP against PyTorch; ``evaluate``, ``bench`` and ``demo`` build on those. Layers, bottom up:
the foundation (``maskrt.contract``, ``specs``, ``checkpoint``, ``onnxio`` ...), the stages
(``maskrt.export``, ``calibration``, ``plugins``, ``runtime``) and ``maskrt.training``, then this
package. A stage never imports the pipeline; the foundation imports no stage
(tests/test_layering.py holds the rule).
"""
