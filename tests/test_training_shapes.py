"""The synthetic shapes dataset is valid COCO, deterministic, and what it claims to be."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrt.coco import load_coco
from maskrt.specs import SHAPES_CATEGORIES
from maskrt.training.shapes import generate_image, make_shapes_dataset


def test_pycocotools_reads_both_splits(shapes_dataset: Path) -> None:
    for split in ("train", "val"):
        coco = load_coco(shapes_dataset / "annotations" / f"instances_{split}.json")
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CATEGORIES)
        assert len(coco.getImgIds()) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(shapes_dataset / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
                assert im.mode == "RGB"


def test_annotations_agree_with_their_masks(shapes_dataset: Path) -> None:
    coco = load_coco(shapes_dataset / "annotations" / "instances_val.json")
    assert len(coco.anns) > 0
    for ann in coco.anns.values():
        m = coco.annToMask(ann)
        ys, xs = np.nonzero(m)
        assert ann["area"] == m.sum() == mask_utils.area(ann["segmentation"])
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert ann["iscrowd"] == 0
        # pycocotools' own bbox of the RLE is the same box
        assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]


def test_images_vary_in_size_and_are_not_square(shapes_dataset: Path) -> None:
    coco = load_coco(shapes_dataset / "annotations" / "instances_train.json")
    sizes = {(i["height"], i["width"]) for i in coco.imgs.values()}
    assert len(sizes) > len(coco.imgs) // 2
    assert sum(h != w for h, w in sizes) > len(sizes) // 2


def test_instances_overlap_and_occlude() -> None:
    # visible masks of one image never overlap, yet some shapes are cut by others
    occluded = 0
    for index in range(30):
        image, instances = generate_image(0, "train", index)
        stack = np.stack([inst.mask for inst in instances])
        assert stack.sum(axis=0).max() <= 1
        occluded += sum(not _is_convex_fill(inst.mask) for inst in instances)
    assert occluded > 0


def _is_convex_fill(mask: np.ndarray) -> bool:
    """Whether each row of the mask is one contiguous run (true for unoccluded convex shapes)."""
    for row in mask:
        xs = np.nonzero(row)[0]
        if xs.size and xs.max() - xs.min() + 1 != xs.size:
            return False
    return True


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = make_shapes_dataset(tmp_path / "a", train=4, val=2, seed=5)
    b = make_shapes_dataset(tmp_path / "b", train=4, val=2, seed=5)
    c = make_shapes_dataset(tmp_path / "c", train=4, val=2, seed=6)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    # held-out images are not training images
    assert (a / "train" / "000000.png").read_bytes() != (a / "val" / "000000.png").read_bytes()
