"""The demo's model: the small demo architecture, its cache, --retrain, and the legacy model."""

from __future__ import annotations

from pathlib import Path

import torch

from maskrt.checkpoint import load_checkpoint, save_checkpoint
from maskrt.introspect import spec_from_module
from maskrt.pipeline.demo import ensure_model
from maskrt.specs import DEMO_ARCH, LEGACY_DEMO_ARCH, build_model, default_spec, demo_spec


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


def test_cached_model_is_reused_and_retrain_retrains(tmp_path: Path, shapes_dataset: Path) -> None:
    said: list[str] = []
    path = tmp_path / "cache" / f"{DEMO_ARCH}.pt"
    path.parent.mkdir()
    ensure_model(path, shapes_dataset, retrain=False, iters=2, echo=said.append)
    assert said[-1].startswith("Training") and load_checkpoint(path)[0].arch == DEMO_ARCH
    # a file that is not what training writes: reused as is without --retrain, replaced with it
    path.write_bytes(b"stale")
    ensure_model(path, shapes_dataset, retrain=False, iters=2, echo=said.append)
    assert said[-1].startswith("Reusing") and path.read_bytes() == b"stale"
    ensure_model(path, shapes_dataset, retrain=True, iters=2, echo=said.append)
    assert said[-1].startswith("Training") and load_checkpoint(path)[0].arch == DEMO_ARCH
