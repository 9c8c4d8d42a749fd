"""maskrt.calibration.regions: where reduced precision goes, found from the graph's data flow.

Oracle: the torchvision module names the exporter keeps on the deploy graph's weights.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from _calibration_graphs import PREDICTION_WEIGHTS, tiny_graph

from maskrt.calibration import find_regions
from maskrt.calibration.regions import int8_nodes, prediction_nodes, roi_head_tensors


def test_regions_follow_data_flow() -> None:
    model = tiny_graph()
    r = find_regions(model)
    names = {model.graph.node[i].name for i in r.feature_nodes}
    assert names == {"sub", "div", "conv1", "relu", "conv2"}  # not exp, decode, huge


def test_prediction_layers_and_roi_heads_found_by_data_flow(random_demo_deploy_graph: Path) -> None:
    model = onnx.load(str(random_demo_deploy_graph))
    regions = find_regions(model)
    preds = [model.graph.node[i] for i in prediction_nodes(model, regions)]
    assert {n.input[1] for n in preds} == PREDICTION_WEIGHTS
    assert len(preds) == 2 * 4 + 2 + 1  # the RPN head runs once per feature map (3 FPN + pool)
    heads = roi_head_tensors(model, regions)
    assert any("box_head" in t for t in heads) and any("mask_head" in t for t in heads)
    assert not any("backbone" in t or "rpn" in t for t in heads)
    assert len(int8_nodes(model, regions)) == len(int8_nodes(model, regions, False)) - len(preds)
