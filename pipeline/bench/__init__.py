"""Speed and memory of the deploy path against torchvision eager, measured A/B in one process.

Both sides see the same images and the same checkpoint. Each side's time is split into
pre-processing (uint8 image -> network input), inference (network) and post-processing
(network output -> boxes and pasted masks in original pixels). Runs are interleaved (A, B, B, A,
...) so that drifting clocks or caches favour neither side, with a pause after every run: both
PyTorch's OpenMP workers and ONNX Runtime's keep a core busy spinning for a while after a call
(measured: ~8 ms and ~35 ms), which would otherwise be taken from whichever side runs next. Each
side runs in its default configuration. Peak RSS is read in a fresh
subprocess per side, because one process's high-water mark cannot be split between two.

Nothing here is a test: figures go to BENCHMARKS.md with the command, machine, date and commit.

Modules, one job each: :mod:`.harness` (the sides and the interleaved timing),
:mod:`.memory` (peak RSS subprocesses), :mod:`.end_to_end`, :mod:`.paste` (the mask-pasting
micro-benchmark), :mod:`.report` (Markdown).
"""

from .end_to_end import bench_end_to_end
from .harness import bench_images, bench_model
from .paste import PASTE_CASES, bench_paste_cases, bench_paste_masks, paste_inputs
from .report import format_report

__all__ = [
    "PASTE_CASES",
    "bench_end_to_end",
    "bench_images",
    "bench_model",
    "bench_paste_cases",
    "bench_paste_masks",
    "format_report",
    "paste_inputs",
]
