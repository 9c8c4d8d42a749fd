"""Deterministic training of the demo Mask R-CNN on a COCO-format dataset.

The recipe (:class:`TrainConfig`), for a model trained from scratch on 2 CPU cores: AdamW (lr
2e-3, weight decay 0.05 on weights, none on norms and biases), a linear warm-up over the first 50
iterations then a cosine decay to 0, batch 4, random horizontal flips, 3000 iterations; the
shipped demo model was trained with it (training/shipped.py). The demo spec trains with smaller
samples than torchvision (128 anchors, 64 RoIs per image; 600/300 RPN proposals instead of
2000/2000), which halves the cost of an iteration on these small images. The recipes and models
tried, with their held-out AP and time: BENCHMARKS.md, "The demo model (issue 34)".
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.checkpoint import save_checkpoint
from maskrt.coco import split_paths
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec, build_model, demo_spec

from .shapes import make_shapes_dataset


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 3000
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 50
    seed: int = 0


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at iteration ``it`` (0-based): linear warm-up from
    1/warmup_iters to 1, times a cosine decay from 1 at iteration 0 to 0 at ``cfg.iters``."""
    warmup = min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
    return warmup * 0.5 * (1.0 + math.cos(math.pi * it / cfg.iters))


def _optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW with weight decay on weight matrices/kernels only (not on norms and biases)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


class CocoInstances:
    """A COCO instance-segmentation split as (image tensor, torchvision target) pairs, in memory.

    image  float32 [3, H, W] in [0, 1]
    target boxes float32 [N, 4] (x1, y1, x2, y2), labels int64 [N] (= COCO category ids),
           masks uint8 [N, H, W]
    Images without usable annotations are skipped (torchvision's trainer cannot learn from them).
    """

    def __init__(self, image_dir: Path, ann_file: Path) -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        self.image_dir = image_dir
        self.ids = [
            i
            for i in sorted(self.coco.imgs)
            if any(
                not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1
                for a in self.coco.imgToAnns.get(i, [])
            )
        ]
        if not self.ids:
            raise MaskrtError(f"{ann_file} has no images with usable instance annotations")
        self._cache: dict[int, tuple[Any, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        if index not in self._cache:
            self._cache[index] = self._load(self.ids[index])
        return self._cache[index]

    def _load(self, image_id: int) -> tuple[Any, dict[str, Any]]:
        import torch
        from PIL import Image

        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            rgb = np.array(Image.open(path).convert("RGB"))
        except OSError as e:
            raise MaskrtError(f"cannot read training image {path}: {e}") from None
        anns = [
            a
            for a in self.coco.imgToAnns[image_id]
            if not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1
        ]
        boxes = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])),
        }
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
        return image, target


def _hflip(image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def spec_for_dataset(data: CocoInstances) -> ModelSpec:
    """The demo spec with classes taken from the dataset's categories (labels = category ids)."""
    cats = data.coco.cats
    num_classes = max(cats) + 1
    names = tuple(cats[i]["name"] if i in cats else str(i) for i in range(1, num_classes))
    return demo_spec().replace(num_classes=num_classes, category_names=names)


def train_demo(
    out: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    config: TrainConfig = TrainConfig(),
    show_progress: bool = False,
) -> tuple[ModelSpec, Path]:
    """Train the demo Mask R-CNN and write its checkpoint to ``out`` (atomically).

    Without ``data_root`` a synthetic shapes train split is generated in a temporary folder
    from ``config.seed``.
    """
    import torch
    from tqdm import tqdm

    if config.iters <= 0 or config.batch_size <= 0:
        raise MaskrtError(
            f"iters and batch size must be positive (got {config.iters}, {config.batch_size})"
        )
    with tempfile.TemporaryDirectory(prefix="maskrt-shapes-") as tmp:
        if data_root is None:
            data_root = make_shapes_dataset(tmp, train=1000, val=0, seed=config.seed, force=True)
        data = CocoInstances(*split_paths(data_root, "train"))
        spec = spec_for_dataset(data)

        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        model = build_model(spec).train()
        optimizer = _optimizer(model, config)
        bar = tqdm(range(config.iters), desc="train", unit="it", disable=not show_progress)
        for it in bar:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(it, config)
            images, targets = [], []
            for index in rng.integers(len(data), size=config.batch_size):
                image, target = data[int(index)]
                if rng.random() < 0.5:
                    image, target = _hflip(image, target)
                images.append(image)
                targets.append(target)
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise MaskrtError(f"training diverged at iteration {it} (loss {loss.item()})")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        return spec, save_checkpoint(out, spec, model)
