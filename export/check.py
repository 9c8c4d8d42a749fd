"""The export's own proof: run the deploy graph in ONNX Runtime and the eager module in
torchvision on the same inputs, and refuse a graph whose detections differ.

Comparing two empty outputs proves nothing, and a trained model finds nothing in random noise.
So the check first runs the graph being written; when it gives fewer than ``min_detections``,
it traces a twin with the RPN and box score thresholds at 0 (those two constants are all that
differs) and compares that: every proposal then yields detections, trained or not.

Rules (per image): detections pair up by label and IoU as ``maskrt validate`` pairs them
(:func:`maskrt.detections.match_detections`); a detection may go unpaired only where float
rounding legitimately decides: when the list is full (``box_detections_per_img`` rows) and its
score ties the last kept score within ``SCORE_TOL`` (which of near-equal scores makes the cut is
summation order), or when its box is thinner than ``THIN_BOX_PX`` (a quarter pixel: whether
torchvision's small-box filter, 1e-2 px, keeps it is a last bit, and a coordinate off by a
rounding moves such a box's IoU with its counterpart below the pairing's 0.5; seen on a
random-weight R50-FPN: a 0.014 px wide box kept by the graph only, a 0.11 px wide one paired with
neither). Paired boxes, scores, mask probabilities and keypoint logits agree within the
tolerances below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torchvision.models.detection.image_list import ImageList

from maskrt.detections import Detections, match_detections
from maskrt.errors import MaskrtError
from maskrt.introspect import backbone_features

SCORE_TOL = 1e-3
BOX_TOL_PX = 0.05  # plus BOX_RTOL of the box's larger side
BOX_RTOL = 1e-3
MASK_TOL = 1e-2  # mask probabilities
KEYPOINT_TOL = 1e-2  # heatmap logits, relative to 1 + |logit|
DEFAULT_MIN_DETECTIONS = 20
THIN_BOX_PX = 0.25  # boxes thinner than this pair or pass the 1e-2 px filter by rounding


@dataclass(frozen=True)
class Reference:
    """One image's eager detections in resized-image coordinates, before mask pasting.

    boxes [N, 4], scores [N], labels [N]; masks [N, M, M] probabilities of the predicted class;
    keypoint_logits [N, J, S, S]; proposals [P, 4] in torchvision's order.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    keypoint_logits: np.ndarray | None
    proposals: np.ndarray


@torch.no_grad()
def torchvision_reference(
    model: Any, images: torch.Tensor, image_sizes: torch.Tensor
) -> list[Reference]:
    """torchvision's own inference on the graph's inputs (``images`` [B, 3, H, W] in [0, 1],
    mean-padded; ``image_sizes`` [B, 2]), skipping only the resize and the mask pasting."""
    t = model.transform
    mean = torch.tensor(t.image_mean).reshape(1, 3, 1, 1)
    std = torch.tensor(t.image_std).reshape(1, 3, 1, 1)
    x = (images - mean) / std  # the mean padding becomes exactly 0, as torchvision pads
    sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
    features = backbone_features(model.backbone, x)
    proposals, _ = model.rpn(ImageList(x, sizes), features)
    dets, _ = model.roi_heads(features, proposals, sizes)
    heads = model.roi_heads
    kps: list[np.ndarray | None] = [None] * len(dets)
    if heads.has_keypoint():
        boxes = [d["boxes"] for d in dets]
        pooled = heads.keypoint_roi_pool(features, boxes, sizes)
        logits = heads.keypoint_predictor(heads.keypoint_head(pooled))
        kps = [k.numpy() for k in logits.split([len(b) for b in boxes])]
    return [
        Reference(
            boxes=d["boxes"].numpy(),
            scores=d["scores"].numpy(),
            labels=d["labels"].numpy(),
            masks=d["masks"][:, 0].numpy() if "masks" in d else None,
            keypoint_logits=kps[i],
            proposals=proposals[i].numpy(),
        )
        for i, d in enumerate(dets)
    ]


@dataclass(frozen=True)
class EagerCheck:
    """What the check compared: images, detections paired, detections left unpaired where float
    rounding decides (a near-tie at the list's cut, a box at the small-box filter), the worst
    errors, and whether the score thresholds were lowered to 0."""

    images: int
    paired: int
    tied_at_cut: int
    box_err: float
    score_err: float
    mask_err: float
    keypoint_err: float
    thresholds_zeroed: bool

    def __str__(self) -> str:
        how = " (score thresholds at 0)" if self.thresholds_zeroed else ""
        return (
            f"checked against torchvision eager{how}: {self.paired} detections on "
            f"{self.images} images agree (worst box {self.box_err:.2g} px, score "
            f"{self.score_err:.2g}, mask {self.mask_err:.2g}); {self.tied_at_cut} unpaired where "
            "rounding decides (tied at the cut, or at the small-box filter)"
        )


def run_graph(model: onnx.ModelProto, images: np.ndarray, sizes: np.ndarray) -> dict[str, Any]:
    """The graph's outputs by name, from ONNX Runtime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    feeds = {"images": images, "image_sizes": sizes}
    return dict(zip(names, session.run(names, feeds)))


def _mismatch(i: int, what: str) -> MaskrtError:
    return MaskrtError(
        f"the exported graph differs from the eager module on check image {i}: {what} "
        "(nothing written; --no-check writes it anyway)"
    )


def compare(
    outputs: dict[str, Any], refs: list[Reference], detections_per_img: int
) -> tuple[int, int, float, float, float, float]:
    """Compare graph outputs with the eager references by the module's rules; raise on a
    difference. Returns (paired, tied at the cut, box, score, mask, keypoint errors)."""
    paired = tied = 0
    box_err = score_err = mask_err = kp_err = 0.0
    for i, ref in enumerate(refs):
        n = int(outputs["num_detections"][i])
        graph = Detections(
            boxes=outputs["boxes"][i, :n],
            scores=outputs["scores"][i, :n],
            labels=outputs["labels"][i, :n].astype(np.int64),
        )
        eager = Detections(boxes=ref.boxes, scores=ref.scores, labels=ref.labels)
        pairs = match_detections(eager, graph)
        full = max(n, len(eager)) >= detections_per_img
        cut = min(graph.scores.min(initial=np.inf), eager.scores.min(initial=np.inf))
        for side, dets, used in (
            ("torchvision", eager, {a for a, _ in pairs}),
            ("graph", graph, {b for _, b in pairs}),
        ):
            sides = dets.boxes[:, 2:] - dets.boxes[:, :2]
            thin = sides.min(axis=1, initial=np.inf) < THIN_BOX_PX
            tied_or_thin = (full & (dets.scores <= cut + SCORE_TOL)) | thin
            lone = [j for j in range(len(dets)) if j not in used]
            unexplained = [j for j in lone if not tied_or_thin[j]]
            if unexplained:
                j = unexplained[0]
                raise _mismatch(
                    i,
                    f"{len(unexplained)} of {len(dets)} {side} detections have no counterpart "
                    f"(first: label {int(dets.labels[j])}, score {float(dets.scores[j]):.4f}, "
                    f"box {np.round(dets.boxes[j], 1).tolist()})",
                )
            tied += len(lone)
        for a, b in pairs:
            size = max(1.0, float((ref.boxes[a, 2:] - ref.boxes[a, :2]).max()))
            d_box = float(np.abs(graph.boxes[b] - ref.boxes[a]).max())
            d_score = float(abs(graph.scores[b] - ref.scores[a]))
            if d_box > BOX_TOL_PX + BOX_RTOL * size or d_score > SCORE_TOL:
                raise _mismatch(
                    i,
                    f"a detection of label {int(ref.labels[a])} moved {d_box:.3g} px / score "
                    f"{d_score:.3g}",
                )
            box_err, score_err = max(box_err, d_box), max(score_err, d_score)
            if ref.masks is not None:
                d = float(np.abs(outputs["masks"][i, b] - ref.masks[a]).max())
                if d > MASK_TOL:
                    raise _mismatch(i, f"a mask differs by {d:.3g} in probability")
                mask_err = max(mask_err, d)
            if ref.keypoint_logits is not None:
                got, want = outputs["keypoint_logits"][i, b], ref.keypoint_logits[a]
                d = float((np.abs(got - want) / (1.0 + np.abs(want))).max())
                if d > KEYPOINT_TOL:
                    raise _mismatch(i, f"keypoint heatmaps differ by {d:.3g} (relative)")
                kp_err = max(kp_err, d)
        paired += len(pairs)
    return paired, tied, box_err, score_err, mask_err, kp_err


@contextmanager
def zero_score_thresholds(model: Any) -> Iterator[None]:
    """Temporarily set the RPN's and the box head's score thresholds to 0."""
    rpn, heads = model.rpn, model.roi_heads
    saved = rpn.score_thresh, heads.score_thresh
    rpn.score_thresh, heads.score_thresh = 0.0, 0.0
    try:
        yield
    finally:
        rpn.score_thresh, heads.score_thresh = saved


def check_against_eager(
    graph: onnx.ModelProto,
    model: Any,
    inputs: tuple[torch.Tensor, torch.Tensor],
    detections_per_img: int,
    rebuild: Callable[[], onnx.ModelProto],
    min_detections: int = DEFAULT_MIN_DETECTIONS,
) -> EagerCheck:
    """Check ``graph`` (exported from ``model``) on ``inputs`` (images [B, 3, H, W], sizes
    [B, 2]); ``rebuild()`` re-exports ``model`` as it is now (used with its score thresholds
    at 0 when the graph itself detects fewer than ``min_detections`` objects)."""
    images, sizes = inputs
    feeds = images.numpy(), sizes.numpy().astype(np.int32)
    zeroed = False
    outputs = run_graph(graph, *feeds)
    if int(outputs["num_detections"].sum()) < min_detections:
        zeroed = True
        with zero_score_thresholds(model):
            outputs = run_graph(rebuild(), *feeds)
            refs = torchvision_reference(model, images, sizes)
    else:
        refs = torchvision_reference(model, images, sizes)
    paired, tied, box_err, score_err, mask_err, kp_err = compare(outputs, refs, detections_per_img)
    if paired < min_detections:
        ties = f", {tied} more tie exactly at the list's cut" if tied else ""
        raise MaskrtError(
            f"cannot check the exported graph: only {paired} detections pair up with "
            f"torchvision's on the check images{ties}, with the score thresholds at 0 "
            f"(need {min_detections}); --no-check skips the check"
        )
    return EagerCheck(
        len(refs), paired, tied, box_err, score_err, mask_err, kp_err, thresholds_zeroed=zeroed
    )
