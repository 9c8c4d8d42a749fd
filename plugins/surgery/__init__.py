"""Graph surgery: swap each RoIAlign unit of an ONNX graph for one RoIAlign plugin node.

Three shapes of RoIAlign are recognised, all by graph structure (never by node names), one
module each (the model: Polygraphy's ``tools/surgeon/subtool``):

* :mod:`.units` -- ``maskrt::MultiScaleRoIAlign``, the unit node ``maskrt export`` writes
  (inputs: L feature maps ``[B, C, H_l, W_l]`` then rois ``[B, N, 4]``; output
  ``[B, N, C, P, P]``). It becomes the multi-level plugin node with the same inputs and output.
* :mod:`.torchvision` -- torchvision's traced ``MultiScaleRoIAlign`` (``torch.onnx.export`` of
  a vanilla model): one ``RoiAlign`` per level over ``rois[levels == l]`` (rois ``[K, 5]`` =
  batch index column and boxes), merged by a chain of ``ScatterElements``. When all RoIs belong
  to image 0 and the level subgraph computes torchvision's LevelMapper, the whole pattern becomes
  ``Unsqueeze(boxes) -> multi-level plugin -> Squeeze``.
* :mod:`.single` -- any other (lone) ONNX ``RoiAlign`` with ``mode="avg"`` becomes the
  single-level plugin node.

:mod:`.finishing` then cleans and folds the graph and carries over what graphsurgeon drops;
:mod:`.graph` holds the graphsurgeon helpers the matchers share, :mod:`.report` the
:class:`SurgeryReport`, :mod:`.cli` the ``maskrt surgery`` verb.

The plugin node's op type, attributes and ONNX domain come from :mod:`maskrt.plugins.contract`.
The domain is ``ai.onnx.contrib``: TensorRT's ONNX parser finds a node with a
``plugin_namespace`` attribute in its plugin registry by op type, ``plugin_version`` and
``plugin_namespace`` (the domain plays no part), and ONNX Runtime runs the same file when the
plugin's CPU twin is registered as an onnxruntime-extensions custom op, which lives in that
domain.

Anything else that looks like a RoIAlign is left alone and listed in the report.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from maskrt.errors import MaskrtError
from maskrt.fileio import check_writable
from maskrt.onnxio import load_onnx, save_onnx

from .report import SurgeryReport

if TYPE_CHECKING:  # onnx is imported when a graph is surgered, not on `maskrt --help`
    import onnx

__all__ = ["SurgeryReport", "surgery", "surgery_file"]


def surgery(
    model: onnx.ModelProto, progress: bool = False
) -> tuple[onnx.ModelProto, SurgeryReport]:
    """Replace every recognised RoIAlign unit of ``model`` with a plugin node.

    Returns the new model (``model`` is not changed) and a report. The graph's inputs and
    outputs keep their names, types and shapes; constants are folded, dead nodes and unused
    model-local functions removed, the nodes sorted topologically and shapes inferred.

    ``progress`` shows a progress bar over the steps (matching, cleanup, shape inference).
    The report lists what TensorRT would still refuse or change in the result
    (:func:`maskrt.plugins.tensorrt_check.tensorrt_findings`), as warnings.

    Raises:
        MaskrtError: the graph has no RoIAlign of any kind (and no plugin node either).
    """
    import onnx
    import onnx_graphsurgeon as gs
    from tqdm import tqdm

    from maskrt.plugins.tensorrt_check import tensorrt_findings

    from .finishing import clean, count_roi_align, finish_model, io_signature
    from .single import replace_single
    from .torchvision import replace_torchvision
    from .units import replace_units

    report = SurgeryReport(nodes_before=len(model.graph.node))
    if count_roi_align(model) == 0:
        if count_roi_align(model, nested=False, plugins=True):
            # surgery's own output: leave it exactly as it is (idempotence)
            report.already_surgered = True
            report.nodes_after = report.nodes_before
            report.tensorrt = tensorrt_findings(model)
            return model, report
        raise MaskrtError("the graph has no RoIAlign (neither maskrt units nor ONNX RoiAlign)")

    bar = tqdm(total=4, desc="surgery", unit="step", disable=not progress, leave=False)
    original = model
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only improve the plugin outputs' declared shapes
        pass
    graph = gs.import_onnx(model)
    io_before = io_signature(graph)
    bar.update()

    replace_units(graph, report)
    replace_torchvision(graph, report)
    replace_single(graph, report)
    bar.update()

    clean(graph)
    if io_signature(graph) != io_before:  # pragma: no cover - a bug, not a user error
        raise AssertionError("surgery changed the graph's inputs or outputs")
    bar.update()

    out = finish_model(graph, original)
    bar.update()
    bar.close()
    report.nodes_after = len(out.graph.node)
    # the passes report what they skip at the top level; If/Loop/Scan bodies are not visited
    if nested := count_roi_align(out) - count_roi_align(out, nested=False):
        report.unrecognised.append(f"{nested} RoIAlign node(s) inside If/Loop/Scan bodies")
    report.tensorrt = tensorrt_findings(out)
    return out, report


def surgery_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    force: bool = False,
    progress: bool = False,
) -> SurgeryReport:
    """``maskrt surgery``: read ``src``, replace its RoIAlign units, write ``dst`` atomically
    (:func:`maskrt.onnxio.save_onnx`: ONNX checker, IR version capped)."""
    target = check_writable(dst, force)  # fail before the slow part
    model = load_onnx(src, check=True)
    try:
        out, report = surgery(model, progress=progress)
    except MaskrtError as e:
        raise MaskrtError(f"{src}: {e}") from None
    save_onnx(out, target, force=force)
    return report
