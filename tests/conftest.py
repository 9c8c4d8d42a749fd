"""Shared fixtures: small synthetic datasets, the shipped demo checkpoint and a briefly trained
one.

The datasets and the trained checkpoint are deterministic and cached in pytest's cache folder
(keyed by the code that makes them), so a developer's second run reuses them; a fresh CI
checkout makes them once per session.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

TEST_TRAIN_IMAGES = 200
TEST_VAL_IMAGES = 24
TEST_TRAIN_ITERS = 150
HELDOUT_VAL_IMAGES = 200
HELDOUT_CALIB_IMAGES = 32


def _code_key(*modules: str, extra: str = "") -> str:
    """A short hash of the source files of ``modules`` (import names), which determine a cached
    artefact; each file is found through its package, wherever its folder lies."""
    h = hashlib.sha256(extra.encode())
    for m in modules:
        spec = importlib.util.find_spec(m)
        assert spec is not None and spec.origin is not None, m
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


def _cache_dir(request: pytest.FixtureRequest) -> Path:
    """pytest's cache folder, or a session temp folder when the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("maskrt"))
    return request.getfixturevalue("tmp_path_factory").mktemp("maskrt")


def _cached_dataset(
    request: pytest.FixtureRequest, name: str, train: int, val: int, seed: int
) -> Path:
    from maskrt.training.shapes import make_shapes_dataset

    key = _code_key("maskrt.training.shapes", extra=f"{train}/{val}/{seed}")
    root = _cache_dir(request) / f"{name}-{key}"
    if not (root / "annotations" / "instances_val.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make_shapes_dataset(tmp, train=train, val=val, seed=seed, force=True)
        tmp.rename(root)
    return root


@pytest.fixture(scope="session")
def shapes_dataset(request: pytest.FixtureRequest) -> Path:
    """A small shapes dataset root (train and val splits, COCO annotations)."""
    return _cached_dataset(request, "shapes", TEST_TRAIN_IMAGES, TEST_VAL_IMAGES, seed=7)


@pytest.fixture(scope="session")
def heldout_dataset(request: pytest.FixtureRequest) -> Path:
    """Images the demo checkpoint never saw: 200 to evaluate (val) and 32 to calibrate (train).

    200, not 24: AP on a few dozen images is noise-dominated (calibration/README.md, "How many
    calibration images, and how many to evaluate on").
    """
    return _cached_dataset(request, "heldout", HELDOUT_CALIB_IMAGES, HELDOUT_VAL_IMAGES, seed=11)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """The demo Mask R-CNN that ships with maskrt (hash-checked): what `maskrt demo` runs, with
    real detections on the held-out shapes (it never saw them: it was trained on seed 0's)."""
    from maskrt.training.shipped import shipped_demo_checkpoint

    return shipped_demo_checkpoint()


@pytest.fixture(scope="session")
def briefly_trained_checkpoint(request: pytest.FixtureRequest, shapes_dataset: Path) -> Path:
    """A demo Mask R-CNN trained here by ``train_demo`` for TEST_TRAIN_ITERS iterations (a minute):
    it has learned something, which is all it promises (too few iterations for confident
    detections)."""
    from maskrt.training.train import TrainConfig, train_demo

    key = _code_key(
        "maskrt.training.train",
        "maskrt.specs",
        "maskrt.training.shapes",
        extra=str(TEST_TRAIN_ITERS),
    )
    path = _cache_dir(request) / f"demo-{key}.pt"
    if not path.is_file():
        train_demo(
            path, data_root=shapes_dataset, config=TrainConfig(iters=TEST_TRAIN_ITERS, seed=3)
        )
    return path


@pytest.fixture(scope="session")
def random_demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight demo checkpoint that keeps every detection (few proposals: quick)."""
    import torch

    from maskrt.checkpoint import save_checkpoint
    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    spec = demo_spec().replace(
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=20,
    )
    path = tmp_path_factory.mktemp("random-demo") / "demo.pt"
    save_checkpoint(path, spec, build_model(spec))
    return path


@pytest.fixture(scope="session")
def random_demo_deploy_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploy graph of a randomly initialised demo Mask R-CNN (structure, not accuracy)."""
    import torch

    from maskrt.export.exporter import export_onnx
    from maskrt.specs import build_model, demo_spec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deploy") / "model.onnx"
    export_onnx(build_model(demo_spec()), path, spec=demo_spec())
    return path
