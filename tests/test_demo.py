"""The demo's model: the small demo architecture, the shipped checkpoint (its hash, recipe and
accuracy), a model retrained here, and the legacy model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from maskrt.checkpoint import load_checkpoint, save_checkpoint
from maskrt.coco import split_paths
from maskrt.errors import MaskrtError
from maskrt.fileio import sha256_file
from maskrt.introspect import spec_from_module
from maskrt.pipeline.demo import DEMO_SEED, DEMO_VAL_IMAGES, ensure_model
from maskrt.pipeline.evaluate import evaluate_artifact
from maskrt.specs import DEMO_ARCH, LEGACY_DEMO_ARCH, build_model, default_spec, demo_spec
from maskrt.training.shapes import make_shapes_dataset
from maskrt.training.shipped import (
    PRETRAINED_DIR,
    demo_record,
    recipe_is_default,
    shipped_demo_checkpoint,
)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_demo_model_is_small_and_deployable() -> None:
    """Small enough to train in minutes (issue 34: 2.4 M parameters, 9.5 MB checkpoint, against
    the legacy model's 12.5 M), with what the deploy graph reads off it: an FPN of 3 levels
    plus the pooled map, one anchor size per map, RoI poolers on the 3 FPN levels."""
    model = build_model(demo_spec())
    assert (
        _params(model)
        < 3_000_000
        < 12_000_000
        < _params(build_model(default_spec(LEGACY_DEMO_ARCH)))
    )
    structure = spec_from_module(model, arch=DEMO_ARCH).structure
    assert structure["feature_maps"] == ["0", "1", "2", "pool"]
    assert structure["anchor_sizes"] == [[32], [64], [128], [256]]
    assert structure["poolers"]["box"]["featmap_names"] == ["0", "1", "2"]
    assert structure["poolers"]["mask"]["featmap_names"] == ["0", "1", "2"]
    # strides 8, 16, 32, 64 on a 128x160 image
    features = model.backbone(torch.zeros(1, 3, 128, 160))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 20), (8, 10), (4, 5), (2, 3)]


def test_legacy_demo_checkpoints_still_load(tmp_path: Path) -> None:
    """Checkpoints of the resnet18 demo model (maskrt before issue 34) rebuild and load."""
    torch.manual_seed(0)
    legacy = build_model(default_spec(LEGACY_DEMO_ARCH))
    path = save_checkpoint(tmp_path / "old.pt", default_spec(LEGACY_DEMO_ARCH), legacy)
    spec, model = load_checkpoint(path)
    assert spec.arch == LEGACY_DEMO_ARCH and spec.has_masks
    assert model.backbone.body.layer4[1].conv2.out_channels == 512  # resnet18's last stage
    for (k, v), v2 in zip(legacy.state_dict().items(), model.state_dict().values()):
        assert torch.equal(v, v2), k


def test_shipped_model_unless_retrained_here(tmp_path: Path, shapes_dataset: Path) -> None:
    said: list[str] = []
    path = tmp_path / "cache" / f"{DEMO_ARCH}.pt"
    path.parent.mkdir()
    assert ensure_model(path, shapes_dataset, False, None, said.append) == shipped_demo_checkpoint()
    assert said[-1].startswith("Using the shipped demo model") and not path.exists()
    with pytest.raises(MaskrtError, match="--retrain"):
        ensure_model(path, shapes_dataset, False, 5, said.append)
    assert ensure_model(path, shapes_dataset, True, 2, said.append) == path
    assert said[-1].startswith("Training") and load_checkpoint(path)[0].arch == DEMO_ARCH
    # a model trained here is used from then on, as it is, until --retrain replaces it
    path.write_bytes(b"stale")
    assert ensure_model(path, shapes_dataset, False, None, said.append) == path
    assert said[-1].startswith("Reusing") and path.read_bytes() == b"stale"
    ensure_model(path, shapes_dataset, True, 2, said.append)
    assert said[-1].startswith("Training") and load_checkpoint(path)[0].arch == DEMO_ARCH


def test_shipped_checkpoint_is_what_maskrt_train_makes_by_default() -> None:
    """Small enough for the repository (issue 34: <= 10 MB), the recorded recipe is
    `maskrt train`'s default one, and the file is the recorded one."""
    record = demo_record()
    path = shipped_demo_checkpoint()
    assert path.stat().st_size <= 10_000_000
    assert recipe_is_default(record) and record["arch"] == DEMO_ARCH
    assert sha256_file(path) == record["sha256"]
    spec, _ = load_checkpoint(path)
    assert spec.arch == DEMO_ARCH and spec == demo_spec().replace(arch=spec.arch)


def test_a_damaged_or_missing_shipped_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    copy = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED_DIR, copy)
    record = demo_record(copy)
    blob = bytearray((copy / record["file"]).read_bytes())
    blob[len(blob) // 2] ^= 1  # one bit
    (copy / record["file"]).write_bytes(bytes(blob))
    with pytest.raises(MaskrtError, match="is not the recorded one") as err:
        shipped_demo_checkpoint(copy)
    assert "\n" not in str(err.value) and "--retrain" in str(err.value)
    (copy / record["file"]).unlink()
    with pytest.raises(MaskrtError, match="is missing"):
        shipped_demo_checkpoint(copy)
    (copy / f"{DEMO_ARCH}.json").write_text("{not json")
    with pytest.raises(MaskrtError, match="missing or unreadable"):
        shipped_demo_checkpoint(copy)


@pytest.mark.slow
def test_shipped_model_meets_its_accuracy_on_the_demo_data(tmp_path: Path) -> None:
    """Issue 34's goal, on the demo's own held-out split (regenerated here, 200 images): bbox AP
    >= 0.80 and segm AP >= 0.75 in PyTorch, as recorded (the record was measured on another
    machine's kernels: AP agrees to a few 1e-3)."""
    record = demo_record()
    root = make_shapes_dataset(
        tmp_path / "shapes", train=0, val=DEMO_VAL_IMAGES, seed=DEMO_SEED, force=True
    )
    result = evaluate_artifact(shipped_demo_checkpoint(), *split_paths(root, "val"), "torch")
    bbox, segm = result.scores.stats["bbox"]["AP"], result.scores.stats["segm"]["AP"]
    assert bbox >= 0.80 and segm >= 0.75
    assert bbox == pytest.approx(record["heldout_ap"]["bbox"], abs=0.01)
    assert segm == pytest.approx(record["heldout_ap"]["segm"], abs=0.01)
