"""Training: the schedule, determinism, and a short smoke run that learns something."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from maskrt.checkpoint import load_checkpoint, save_checkpoint
from maskrt.coco import split_paths
from maskrt.errors import MaskrtError
from maskrt.training.train import CocoInstances, TrainConfig, lr_factor, train_demo


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(iters=1000, warmup_iters=100)
    cosine = [0.5 * (1 + math.cos(math.pi * i / 1000)) for i in range(1000)]
    # the same float64 formula in another order: approx's relative 1e-6 is ample
    assert lr_factor(0, cfg) == pytest.approx(0.01 * cosine[0])
    assert lr_factor(49, cfg) == pytest.approx(0.5 * cosine[49])
    assert lr_factor(99, cfg) == pytest.approx(cosine[99])
    assert lr_factor(500, cfg) == pytest.approx(0.5)
    assert lr_factor(999, cfg) == pytest.approx(cosine[999]) and lr_factor(999, cfg) < 1e-4
    factors = [lr_factor(i, cfg) for i in range(100, 1000)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # decays monotonically


def test_short_run_is_deterministic_and_loads(tmp_path: Path, shapes_dataset: Path) -> None:
    cfg = TrainConfig(iters=3, batch_size=2, seed=11)
    spec_a, a = train_demo(tmp_path / "a.pt", data_root=shapes_dataset, config=cfg)
    spec_b, b = train_demo(tmp_path / "b.pt", data_root=shapes_dataset, config=cfg)
    assert spec_a == spec_b
    assert spec_a.category_names == ("circle", "square", "triangle")
    _, ma = load_checkpoint(a)
    _, mb = load_checkpoint(b)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k


def _held_out_loss(model: torch.nn.Module, data: CocoInstances) -> float:
    """torchvision's summed training losses on fixed held-out images (no weight update)."""
    model.train()
    with torch.no_grad():
        images, targets = zip(*(data[i] for i in range(8)))
        return float(sum(model(list(images), list(targets)).values()))


def test_briefly_trained_model_beats_chance(
    briefly_trained_checkpoint: Path, shapes_dataset: Path, tmp_path: Path
) -> None:
    """The shared test checkpoint learned: lower held-out loss and higher AP than its own init."""
    from maskrt.pipeline.evaluate import evaluate_artifact
    from maskrt.specs import build_model

    spec, trained = load_checkpoint(briefly_trained_checkpoint)
    torch.manual_seed(3)
    untrained_path = save_checkpoint(tmp_path / "untrained.pt", spec, build_model(spec))
    val = CocoInstances(*split_paths(shapes_dataset, "val"))
    _, untrained = load_checkpoint(untrained_path)
    assert _held_out_loss(trained, val) < 0.8 * _held_out_loss(untrained, val)

    def ap50(path: Path) -> float:
        images, ann = split_paths(shapes_dataset, "val")
        result = evaluate_artifact(path, images, ann, backend="torch")
        return result.scores.stats["bbox"]["AP50"]

    assert ap50(briefly_trained_checkpoint) > ap50(untrained_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(MaskrtError, match="positive"):
        train_demo(tmp_path / "x.pt", config=TrainConfig(iters=0))
    with pytest.raises(MaskrtError, match="not a maskrt dataset root"):
        train_demo(tmp_path / "x.pt", data_root=tmp_path, config=TrainConfig(iters=1))
