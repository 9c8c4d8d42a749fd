"""Checkpoints round-trip with their spec, plain state_dicts load, mismatches are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskrt.checkpoint import load_checkpoint, save_checkpoint
from maskrt.errors import MaskrtError
from maskrt.specs import DEMO_ARCH, build_model, default_spec, demo_spec


def test_round_trip_keeps_spec_and_weights(tmp_path: Path) -> None:
    spec = demo_spec().replace(box_score_thresh=0.3, min_size=160, max_size=256)
    torch.manual_seed(0)
    model = build_model(spec)
    path = save_checkpoint(tmp_path / "m.pt", spec, model)
    spec2, model2 = load_checkpoint(path)
    assert spec2 == spec
    assert model2.roi_heads.score_thresh == 0.3
    assert model2.transform.min_size == (160,)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # the payload loads with weights_only=True (no pickled code)
    assert torch.load(path, weights_only=True)["format"] == "maskrt-checkpoint"


def test_plain_state_dict_needs_and_accepts_an_arch(tmp_path: Path) -> None:
    spec = demo_spec()
    path = tmp_path / "plain.pt"
    torch.save(build_model(spec).state_dict(), path)
    with pytest.raises(MaskrtError, match="--arch"):
        load_checkpoint(path)
    spec2, _ = load_checkpoint(path, arch=DEMO_ARCH)
    assert spec2.arch == DEMO_ARCH and spec2.num_classes == spec.num_classes


def test_plain_torchvision_state_dict_infers_num_classes(tmp_path: Path) -> None:
    spec = default_spec("fasterrcnn_resnet50_fpn", num_classes=5, min_size=320, max_size=512)
    path = tmp_path / "frcnn.pt"
    torch.save({"model": build_model(spec).state_dict()}, path)  # torchvision reference format
    spec2, model = load_checkpoint(path, arch="fasterrcnn_resnet50_fpn")
    assert spec2.num_classes == 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


def test_wrong_num_classes_names_keys_and_shapes(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", demo_spec(), build_model(demo_spec()))
    with pytest.raises(MaskrtError) as e:
        load_checkpoint(path, spec=demo_spec().replace(num_classes=7, category_names=()))
    msg = str(e.value)
    assert "roi_heads.box_predictor.cls_score.weight (4, 256) != (7, 256)" in msg
    assert "\n" not in msg


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = build_model(demo_spec()).state_dict()
    state.pop("rpn.head.conv.0.0.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(MaskrtError) as e:
        load_checkpoint(path, arch=DEMO_ARCH)
    assert "missing keys: rpn.head.conv.0.0.weight" in str(e.value)
    assert "unexpected keys: extra.weight" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_unreadable_files_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(MaskrtError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_missing_file_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(MaskrtError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "t.pt")
