"""The reference backend: the torchvision model itself (its transform and postprocess)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskrt.detections import Detections
from maskrt.errors import MaskrtError
from maskrt.specs import ModelSpec

from ..base import Predictor
from ..preprocess import check_image


def to_tensor(image: np.ndarray) -> Any:
    """RGB uint8 [H, W, 3] -> float32 tensor [3, H, W] in [0, 1] (as torchvision's to_tensor)."""
    import torch

    writable = np.require(image, np.uint8, requirements=["C", "W"])  # torch wants writable memory
    return torch.from_numpy(writable).permute(2, 0, 1).float().div(255)


def from_torchvision(output: dict[str, Any]) -> Detections:
    """One torchvision detection dict -> Detections (masks thresholded at 0.5)."""
    masks = output.get("masks")
    keypoints = output.get("keypoints")
    return Detections(
        boxes=output["boxes"].detach().cpu().numpy().astype(np.float32),
        scores=output["scores"].detach().cpu().numpy().astype(np.float32),
        labels=output["labels"].detach().cpu().numpy().astype(np.int64),
        masks=None if masks is None else (masks[:, 0] > 0.5).cpu().numpy(),
        keypoints=None
        if keypoints is None
        else keypoints.detach().cpu().numpy().astype(np.float32),
    )


class TorchPredictor(Predictor):
    """Runs a ``torch.nn.Module`` detector from torchvision in eval mode."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, model: Any, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self.model = model.eval().to(device)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike[str],
        arch: str | None = None,
        device: str = "cpu",
        factory: str | None = None,
        factory_args: dict[str, Any] | None = None,
    ) -> TorchPredictor:
        """``arch``, ``factory``, ``factory_args``: as
        :func:`maskrt.checkpoint.load_checkpoint` takes them."""
        from maskrt.checkpoint import load_checkpoint

        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise MaskrtError("device cuda requested but PyTorch sees no CUDA GPU")
        spec, model = load_checkpoint(
            checkpoint, arch=arch, factory=factory, factory_args=factory_args
        )
        return cls(spec, model, device)

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import torch

        for image in images:
            check_image(image)
        if not images:
            return []
        with torch.inference_mode():
            outputs = self.model([to_tensor(im).to(self.device) for im in images])
        return [from_torchvision(o) for o in outputs]
