"""The export's own proof: run the deploy graph in ONNX Runtime and the eager module in
torchvision on the same inputs, and refuse a graph whose detections differ.

Comparing two empty outputs proves nothing, and a trained model finds nothing in random noise.
So the check first runs the graph being written; when it gives fewer than ``min_detections``,
it traces a twin with the RPN and box score thresholds at 0 (those two constants are all that
differs) and compares that: every proposal then yields detections, trained or not.

The rule, as a careful reviewer applies it (export/README.md states it with its bounds):

1. Strict (:func:`compare`): per image, every detection pairs with one of the same label at the
   same position (:func:`maskrt.export.ties.pair_by_position`), paired boxes, scores, mask
   probabilities and keypoint logits within the tolerances below. Most graphs pass here.
2. Only when that fails, stage by stage (:func:`staged_check`), each stage fed the graph's own
   output of the stage before, so a difference is found where it starts and does not cascade:
   the RPN's proposals as sets (with their objectness), the box head on the graph's proposals,
   the mask/keypoint heads on the graph's boxes. Each stage pairs by position under the strict
   tolerances; an item on one side only is forgiven only at a decision point whose two competing
   quantities are within eps (:mod:`maskrt.export.ties`; eps from the errors measured on the
   pairs). What then differs end to end is torchvision's own response to the small differences
   each stage passes on (the stages agreed on the same inputs), reported by cause. Each stage
   may forgive at most as many items as it pairs; forgiven differences are reported by kind.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torchvision.models.detection.image_list import ImageList

from maskrt import contract
from maskrt.errors import InternalError, MaskrtError
from maskrt.introspect import backbone_features

from .deploy import _BOX_MIN_SIZE, DEBUG_OUTPUTS, DeployModel
from .ties import (
    BOX_RTOL,
    BOX_TOL_PX,
    EPS_FACTOR,
    Decisions,
    Difference,
    Ranked,
    box_tolerance,
    count_kinds,
    explain,
    measured_epsilon,
    pair_by_position,
)

NOISE_FACTOR = 32.0  # a paired value may differ by this many times float32's own error


@dataclass(frozen=True)
class Tolerances:
    """How far paired values may differ: box coordinates (px), scores, mask probabilities,
    keypoint heatmap logits (relative to 1 + |logit|)."""

    box_px: float
    score: float
    mask: float
    keypoint: float

    def __str__(self) -> str:
        return (
            f"box {self.box_px:.2g} px, score {self.score:.2g}, mask {self.mask:.2g}, "
            f"keypoint {self.keypoint:.2g}"
        )


# Never looser than these (the check's fixed tolerances before 2026-12-06) ...
LOOSEST = Tolerances(box_px=BOX_TOL_PX, score=1e-3, mask=1e-2, keypoint=1e-2)
# ... and never tighter than these (a few dozen float32 ulps at the values' scales).
TIGHTEST = Tolerances(box_px=1e-3, score=1e-6, mask=1e-5, keypoint=1e-4)
DEFAULT_MIN_DETECTIONS = 20
PROPOSALS, PROPOSAL_SCORES, NUM_PROPOSALS = DEBUG_OUTPUTS
END_TO_END = "end to end"  # staged_check's report of what the stages pass on (not forgiven)

__all__ = [
    "BOX_RTOL",
    "BOX_TOL_PX",
    "DEFAULT_MIN_DETECTIONS",
    "EagerCheck",
    "Reference",
    "StageComparison",
    "Tolerances",
    "box_head_decisions",
    "check_tolerances",
    "check_against_eager",
    "compare",
    "staged_check",
    "torchvision_reference",
]


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


def _normalized(model: Any, images: torch.Tensor) -> torch.Tensor:
    """The graph's input ``images`` [B, 3, H, W] in [0, 1], mean-padded, as torchvision
    normalizes them (the mean padding becomes exactly 0, as torchvision pads)."""
    t = model.transform
    mean = torch.tensor(t.image_mean).reshape(1, 3, 1, 1)
    std = torch.tensor(t.image_std).reshape(1, 3, 1, 1)
    return (images - mean) / std


def _head_outputs(
    model: Any, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
    labels: list[torch.Tensor], sizes: list[tuple[int, int]],
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:  # fmt: skip
    """Eager mask probabilities of ``labels`` [N, M, M] and keypoint logits [N, J, S, S] of the
    given boxes per image (None where the model has no such head)."""
    heads = model.roi_heads
    counts = [len(b) for b in boxes]
    masks: list[np.ndarray | None] = [None] * len(boxes)
    kps: list[np.ndarray | None] = [None] * len(boxes)
    if heads.has_mask():
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, sizes)))
        flat = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
        probs = logits[torch.arange(len(flat)), flat.long()].sigmoid()
        masks = [m.numpy() for m in probs.split(counts)]
    if heads.has_keypoint():
        pooled = heads.keypoint_roi_pool(features, boxes, sizes)
        logits = heads.keypoint_predictor(heads.keypoint_head(pooled))
        kps = [k.numpy() for k in logits.split(counts)]
    return masks, kps


@torch.no_grad()
def torchvision_reference(
    model: Any, images: torch.Tensor, image_sizes: torch.Tensor
) -> list[Reference]:
    """torchvision's own inference on the graph's inputs (``images`` [B, 3, H, W] in [0, 1],
    mean-padded; ``image_sizes`` [B, 2]), skipping only the resize and the mask pasting."""
    x = _normalized(model, images)
    sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
    features = backbone_features(model.backbone, x)
    proposals, _ = model.rpn(ImageList(x, sizes), features)
    dets, _ = model.roi_heads(features, proposals, sizes)
    kps: list[np.ndarray | None] = [None] * len(dets)
    if model.roi_heads.has_keypoint():
        boxes = [d["boxes"] for d in dets]
        _, kps = _head_outputs(model, features, boxes, [d["labels"] for d in dets], sizes)
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
    """What the check compared: images, detections paired, the worst errors, whether the score
    thresholds were lowered to 0, and, when the strict comparison failed (``strict_failure``
    says how), the differences the staged comparison forgave, by stage and kind."""

    images: int
    paired: int
    box_err: float
    score_err: float
    mask_err: float
    keypoint_err: float
    thresholds_zeroed: bool
    tolerances: Tolerances = LOOSEST
    strict_failure: str | None = None
    forgiven: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_forgiven(self) -> int:
        """Items on one side only that the stages forgave as near-ties."""
        return sum(
            sum(kinds.values()) for stage, kinds in self.forgiven.items() if stage != END_TO_END
        )

    def __str__(self) -> str:
        how = " (score thresholds at 0)" if self.thresholds_zeroed else ""
        text = (
            f"checked against torchvision eager{how}: {self.paired} detections on "
            f"{self.images} images agree (worst box {self.box_err:.2g} px, score "
            f"{self.score_err:.2g}, mask {self.mask_err:.2g}; tolerances {self.tolerances})"
        )
        if self.strict_failure is None:
            return text + "; no differences"
        parts = [
            f"{stage}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            for stage, kinds in self.forgiven.items()
            if kinds and stage != END_TO_END
        ]
        passed_on = ", ".join(f"{n} {k}" for k, n in self.forgiven.get(END_TO_END, {}).items())
        return (
            f"{text}, stage by stage; {self.num_forgiven} items on one side only forgiven as "
            f"near-ties ({'; '.join(parts) or 'none'}); end to end, what the stages pass on: "
            f"{passed_on or 'nothing'}; the strict comparison found: {self.strict_failure}"
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
    feeds = {contract.INPUT_IMAGES: images, contract.INPUT_IMAGE_SIZES: sizes}
    return dict(zip(names, session.run(names, feeds)))


def _mismatch(i: int, what: str) -> MaskrtError:
    return MaskrtError(
        f"the exported graph differs from the eager module on check image {i}: {what} "
        "(nothing written; --no-check writes it anyway)"
    )


def _graph_detections(outputs: dict[str, Any], i: int) -> Ranked:
    n = int(outputs[contract.OUTPUT_NUM_DETECTIONS][i])
    return Ranked(
        boxes=outputs[contract.OUTPUT_BOXES][i, :n],
        scores=outputs[contract.OUTPUT_SCORES][i, :n],
        groups=outputs[contract.OUTPUT_LABELS][i, :n].astype(np.int64),
    )


def _describe(r: Ranked, j: int, what: str = "label") -> str:
    return (
        f"{what} {int(r.groups[j])}, score {float(r.scores[j]):.4g}, "
        f"box {np.round(r.boxes[j].astype(np.float64), 1).tolist()}"
    )


def _pair_errors(
    i: int, a: Ranked, b: Ranked, pairs: list[tuple[int, int]], what: str, tol: Tolerances,
    group: str = "label",
) -> tuple[float, float]:  # fmt: skip
    """Worst box and score errors of the ``pairs``; raise where one is above ``tol``. ``what``
    names the stage, ``group`` what an item's group is (label, level)."""
    box_err = score_err = 0.0
    for x, y in pairs:
        d_box = float(np.abs(a.boxes[x].astype(np.float64) - b.boxes[y]).max())
        d_score = float(abs(float(a.scores[x]) - float(b.scores[y])))
        if d_score > tol.score or d_box > tol.box_px:
            raise _mismatch(
                i,
                f"{what}: a detection moved {d_box:.3g} px / score {d_score:.3g} (tolerances "
                f"{tol.box_px:.2g} px / {tol.score:.2g}; {_describe(a, x, group)})",
            )
        box_err, score_err = max(box_err, d_box), max(score_err, d_score)
    return box_err, score_err


def _mask_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max(initial=0.0))


def _keypoint_error(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.abs(got - want) / (1.0 + np.abs(want))).max(initial=0.0))


def compare(
    outputs: dict[str, Any], refs: list[Reference], tol: Tolerances = LOOSEST
) -> tuple[int, float, float, float, float]:
    """The strict comparison of graph outputs with the eager references: every detection paired
    at the same position, every paired value within ``tol``; raise on the first difference.
    Returns (paired, box, score, mask, keypoint errors)."""
    paired = 0
    box_err = score_err = mask_err = kp_err = 0.0
    for i, ref in enumerate(refs):
        graph = _graph_detections(outputs, i)
        eager = Ranked(ref.boxes, ref.scores, ref.labels.astype(np.int64))
        pairs = pair_by_position(eager, graph)
        for side, dets, used in (
            ("torchvision", eager, {a for a, _ in pairs}),
            ("graph", graph, {b for _, b in pairs}),
        ):
            lone = [j for j in range(len(dets)) if j not in used]
            if lone:
                raise _mismatch(
                    i,
                    f"{len(lone)} of {len(dets)} {side} detections have no counterpart at the "
                    f"same position (first: {_describe(dets, lone[0])})",
                )
        b_err, s_err = _pair_errors(i, eager, graph, pairs, "detections", tol)
        box_err, score_err = max(box_err, b_err), max(score_err, s_err)
        for a, b in pairs:
            if ref.masks is not None:
                d = _mask_error(outputs[contract.OUTPUT_MASKS][i, b], ref.masks[a])
                if d > tol.mask:
                    raise _mismatch(
                        i, f"a mask differs by {d:.3g} in probability (tolerance {tol.mask:.2g})"
                    )
                mask_err = max(mask_err, d)
            if ref.keypoint_logits is not None:
                got = outputs[contract.OUTPUT_KEYPOINT_LOGITS][i, b]
                d = _keypoint_error(got, ref.keypoint_logits[a])
                if d > tol.keypoint:
                    raise _mismatch(i, f"keypoint heatmaps differ by {d:.3g} (relative)")
                kp_err = max(kp_err, d)
        paired += len(pairs)
    return paired, box_err, score_err, mask_err, kp_err


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


# ---------------------------------------------------------------- the staged comparison


@dataclass(frozen=True)
class RpnCandidates:
    """One image's RPN candidates as torchvision's ``filter_proposals`` received them: every
    anchor's decoded box clipped to the image [A, 4], objectness probability [A] and FPN level
    [A]; the probability of each level's k-th best anchor (the pre-NMS top-k cut; -inf for a
    level with no more than k anchors) [L]; the proposals it kept [P, 4] and their scores [P]."""

    boxes: np.ndarray
    probs: np.ndarray
    levels: np.ndarray
    topk_cut: np.ndarray
    kept_boxes: np.ndarray
    kept_scores: np.ndarray

    def lookup(self, boxes: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Level and probability of the candidate at each of ``boxes`` [N, 4] (within the
        pairing tolerance; level -1 and probability nan where none is)."""
        level = np.full(len(boxes), -1, np.int64)
        prob = np.full(len(boxes), np.nan)
        for s in range(0, len(boxes), chunk):  # [chunk, A, 4] float32 at a time
            part = boxes[s : s + chunk].astype(np.float32)
            d = np.abs(part[:, None] - self.boxes[None]).max(-1)  # [n, A]
            j = d.argmin(1) if d.size else np.zeros(0, np.int64)
            tol = box_tolerance(part.astype(np.float64))
            ok = d[np.arange(len(part)), j] <= tol if d.size else np.zeros(0, bool)
            level[s : s + chunk] = np.where(ok, self.levels[j], -1)
            prob[s : s + chunk] = np.where(ok, self.probs[j], np.nan)
        return level, prob


@torch.no_grad()
def _rpn_candidates(
    model: Any, x: torch.Tensor, sizes: list[tuple[int, int]], features: dict[str, torch.Tensor]
) -> list[RpnCandidates]:
    """Run the eager RPN and keep what its ``filter_proposals`` saw and returned."""
    rpn = model.rpn
    seen: list[tuple[Any, ...]] = []
    original = rpn.filter_proposals

    def capture(proposals: Any, objectness: Any, image_shapes: Any, per_level: Any) -> Any:
        out = original(proposals, objectness, image_shapes, per_level)
        seen.append((proposals, objectness, list(per_level), out))
        return out

    rpn.filter_proposals = capture  # an instance attribute shadows the method for this call
    try:
        rpn(ImageList(x, sizes), features)
    finally:
        del rpn.filter_proposals
    proposals, objectness, per_level, (kept_boxes, kept_scores) = seen[0]
    k = int(rpn.pre_nms_top_n())
    logits = objectness.reshape(len(sizes), -1)
    levels = np.repeat(np.arange(len(per_level)), per_level)
    result = []
    for i, (h, w) in enumerate(sizes):
        boxes = proposals[i].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        cuts = []
        for lvl_logits in logits[i].split(per_level):
            if len(lvl_logits) > k:
                cuts.append(float(torch.sigmoid(lvl_logits.topk(k).values[-1])))
            else:
                cuts.append(-math.inf)
        result.append(
            RpnCandidates(
                boxes=boxes.numpy(),
                probs=torch.sigmoid(logits[i]).numpy(),
                levels=levels,
                topk_cut=np.asarray(cuts),
                kept_boxes=kept_boxes[i].numpy(),
                kept_scores=kept_scores[i].numpy(),
            )
        )
    return result


def box_head_decisions(model: Any) -> Decisions:
    """The box head's discrete decisions (torchvision's RoIHeads.postprocess_detections)."""
    heads = model.roi_heads
    return Decisions(
        capacity=int(heads.detections_per_img),
        nms_iou=float(heads.nms_thresh),
        min_size=_BOX_MIN_SIZE,
        score_thresh=float(heads.score_thresh),
    )


@dataclass
class StageComparison:
    """One stage's (eager, graph) lists per image, its decisions per image, and what pairing
    and the tie rules made of them (:meth:`decide`)."""

    name: str
    what: str  # how an item is described ("label", "level")
    lists: list[tuple[Ranked, Ranked]]  # (eager, graph) per image
    rules: list[Decisions]
    tol: Tolerances = LOOSEST
    by_group: bool = True  # pair only within a group (proposals' levels are inferred: not)
    pairs: list[list[tuple[int, int]]] = field(default_factory=list)
    differences: list[list[Difference]] = field(default_factory=list)
    box_err: float = 0.0
    score_err: float = 0.0

    def decide(self) -> dict[str, int]:
        """Pair, check the pairs' errors against the tolerances, measure eps, explain every
        lone item; raise on an unexplained one or on more forgiven than paired. Returns the
        forgiven differences by kind."""
        self.pairs = [pair_by_position(a, b, self.by_group) for a, b in self.lists]
        for i, ((a, b), pp) in enumerate(zip(self.lists, self.pairs)):
            be, se = _pair_errors(i, a, b, pp, self.name, self.tol, self.what)
            self.box_err, self.score_err = max(self.box_err, be), max(self.score_err, se)
        eps = measured_epsilon((a, b, pp) for (a, b), pp in zip(self.lists, self.pairs))
        self.differences = [
            explain(a, b, pp, rules, eps)
            for (a, b), pp, rules in zip(self.lists, self.pairs, self.rules)
        ]
        for i, diffs in enumerate(self.differences):
            for d in diffs:
                if d.kind is None:
                    side, other = ("torchvision", "graph")[:: 1 if d.side == "a" else -1]
                    r = self.lists[i][0 if d.side == "a" else 1]
                    raise _mismatch(
                        i,
                        f"{self.name}: {side} has {_describe(r, d.index, self.what)} that {other} "
                        f"lacks, and no near-tie explains it (eps: score {eps.score_rel:.2g} "
                        f"relative, box {eps.box_px:.2g} px, times {EPS_FACTOR:g})",
                    )
        forgiven = sum(len(d) for d in self.differences)
        paired = sum(len(p) for p in self.pairs)
        if forgiven > paired:
            raise MaskrtError(
                f"cannot check the exported graph: {self.name} differ in {forgiven} items where "
                f"near-ties decide, more than the {paired} that agree; the check cannot tell ties "
                "from a defect on these images: give real ones (--check-images), or --no-check"
            )
        return count_kinds(d for diffs in self.differences for d in diffs)


def _proposal_stage(
    model: Any, outputs: dict[str, Any], candidates: list[RpnCandidates], tol: Tolerances
) -> StageComparison:
    rpn = model.rpn
    lists, rules = [], []
    for i, cand in enumerate(candidates):
        n = int(outputs[NUM_PROPOSALS][i])
        graph_boxes = outputs[PROPOSALS][i, :n]
        eager_level, eager_prob = cand.lookup(cand.kept_boxes)
        graph_level, graph_prob = cand.lookup(graph_boxes)
        # NMS runs per level: a proposal whose anchor was not found may compete with any.
        eager = Ranked(cand.kept_boxes, cand.kept_scores, eager_level)
        graph = Ranked(graph_boxes, outputs[PROPOSAL_SCORES][i, :n], graph_level)
        lists.append((eager, graph))
        rules.append(
            Decisions(
                capacity=int(rpn.post_nms_top_n()),
                nms_iou=float(rpn.nms_thresh),
                min_size=float(rpn.min_size),
                score_thresh=float(rpn.score_thresh),
                topk_cut=cand.topk_cut,
                topk_level={"a": eager_level, "b": graph_level},
                topk_prob={"a": eager_prob, "b": graph_prob},
            )
        )
    # Levels come from the nearest candidate, and candidates of two levels can coincide: pair
    # by position alone, and use the levels only for the NMS and top-k rules.
    return StageComparison("proposals", "level", lists, rules, tol, by_group=False)


def _unit_grid(fields: Any, box: np.ndarray) -> tuple[int, int, int]:
    """(level, sampling rows, sampling columns) a RoIAlign unit pools ``box`` [4] with."""
    level = int(fields.levels(box[None])[0])
    scale = float(fields.spatial_scales[level])
    if fields.sampling_ratio > 0:
        return level, fields.sampling_ratio, fields.sampling_ratio
    offset = 0.5 if fields.aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - offset for v in box)
    w, h = x2 - x1, y2 - y1
    if not fields.aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    size = fields.output_size
    return level, math.ceil(h / size), math.ceil(w / size)


def _end_to_end_differences(
    model: Any, outputs: dict[str, Any], refs: list[Reference], tol: Tolerances
) -> dict[str, int]:
    """What differs end to end on detections paired by position, once every stage agreed on
    its own inputs: torchvision's own response to the small differences the stages pass on, by
    cause. A box beyond tolerance: proposals within tolerance regressed into it (box decoding
    multiplies a proposal's error by up to exp(dw), 62x at torchvision's clamp). A mask or
    keypoint output beyond tolerance on boxes within it: the boxes pool from different FPN
    levels or sampling grids (a LevelMapper or ``ceil(roi / P)`` boundary), or the head
    responds that steeply (random-weight heads do)."""
    units = DeployModel(model).units
    counts = {
        "level boundary": 0,
        "sampling-grid boundary": 0,
        "steep head": 0,
        "box regressed from a proposal's error": 0,
        "detection unpaired at the same position": 0,
    }
    heads = (
        ("mask", contract.OUTPUT_MASKS, "masks", tol.mask, _mask_error),
        ("keypoint", contract.OUTPUT_KEYPOINT_LOGITS, "keypoint_logits", tol.keypoint,
         _keypoint_error),
    )  # fmt: skip
    for i, ref in enumerate(refs):
        graph = _graph_detections(outputs, i)
        eager = Ranked(ref.boxes, ref.scores, ref.labels.astype(np.int64))
        pairs = pair_by_position(eager, graph)
        counts["detection unpaired at the same position"] += (
            len(eager) + len(graph) - 2 * len(pairs)
        )
        for a, b in pairs:
            moved = float(np.abs(eager.boxes[a].astype(np.float64) - graph.boxes[b]).max())
            if moved > tol.box_px:
                counts["box regressed from a proposal's error"] += 1
                continue
            for unit, output, attr, limit, error in heads:
                want = getattr(ref, attr)
                if want is None or error(outputs[output][i, b], want[a]) <= limit:
                    continue
                ge, gg = (_unit_grid(units[unit], box) for box in (ref.boxes[a], graph.boxes[b]))
                if ge[0] != gg[0]:
                    counts["level boundary"] += 1
                elif ge != gg:
                    counts["sampling-grid boundary"] += 1
                else:
                    counts["steep head"] += 1
    return {k: v for k, v in counts.items() if v}


@torch.no_grad()
def staged_check(
    model: Any, outputs: dict[str, Any], images: torch.Tensor, image_sizes: torch.Tensor,
    refs: list[Reference], tol: Tolerances = LOOSEST,
) -> tuple[int, dict[str, dict[str, int]], tuple[float, float, float, float]]:  # fmt: skip
    """Compare stage by stage (see the module docstring): ``outputs`` of the graph with the
    debug outputs (``proposals``, ``proposal_scores``, ``num_proposals``). Returns (detections
    paired at the box head, forgiven differences by stage and kind, worst box/score/mask/
    keypoint errors); raises MaskrtError where a difference is not a near-tie."""
    x = _normalized(model, images)
    sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
    features = backbone_features(model.backbone, x)
    forgiven: dict[str, dict[str, int]] = {}

    proposals = _proposal_stage(model, outputs, _rpn_candidates(model, x, sizes, features), tol)
    forgiven["proposals"] = proposals.decide()

    # The box head on the graph's own proposals.
    graph_props = [
        torch.from_numpy(outputs[PROPOSALS][i, : int(n)].copy())
        for i, n in enumerate(outputs[NUM_PROPOSALS])
    ]
    dets, _ = model.roi_heads(features, graph_props, sizes)
    rules = box_head_decisions(model)
    lists = [
        (
            Ranked(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy().astype(np.int64)),
            _graph_detections(outputs, i),
        )
        for i, d in enumerate(dets)
    ]
    box_stage = StageComparison(
        "box head on the graph's proposals", "label", lists, [rules] * len(lists), tol
    )
    forgiven["detections"] = box_stage.decide()
    box_err, score_err = box_stage.box_err, box_stage.score_err

    # The mask / keypoint heads on the graph's own boxes and labels.
    mask_err = kp_err = 0.0
    graph_dets = [_graph_detections(outputs, i) for i in range(len(sizes))]
    masks, kps = _head_outputs(
        model, features, [torch.from_numpy(g.boxes.copy()) for g in graph_dets],
        [torch.from_numpy(g.groups.copy()) for g in graph_dets], sizes,
    )  # fmt: skip
    for i, (g, mask, kp) in enumerate(zip(graph_dets, masks, kps)):
        n = len(g)
        if mask is not None:
            d = _mask_error(outputs[contract.OUTPUT_MASKS][i, :n], mask)
            if d > tol.mask:
                raise _mismatch(i, f"the mask head on the graph's boxes differs by {d:.3g}")
            mask_err = max(mask_err, d)
        if kp is not None:
            d = _keypoint_error(outputs[contract.OUTPUT_KEYPOINT_LOGITS][i, :n], kp)
            if d > tol.keypoint:
                raise _mismatch(
                    i, f"the keypoint head on the graph's boxes differs by {d:.3g} (relative)"
                )
            kp_err = max(kp_err, d)
    forgiven[END_TO_END] = _end_to_end_differences(model, outputs, refs, tol)
    paired = sum(len(p) for p in box_stage.pairs)
    return paired, forgiven, (box_err, score_err, mask_err, kp_err)


# ---------------------------------------------------------------- the check


def _same_graph_outputs(outputs: dict[str, Any], debug: dict[str, Any], tol: Tolerances) -> None:
    """The debug twin (the same export with the debug outputs added) must answer as the graph
    being checked did, or the staged comparison would prove another graph."""
    within: dict[str, Callable[[np.ndarray, np.ndarray], bool]] = {
        contract.OUTPUT_BOXES: lambda x, y: float(np.abs(x - y).max(initial=0.0)) <= tol.box_px,
        contract.OUTPUT_SCORES: lambda x, y: float(np.abs(x - y).max(initial=0.0)) <= tol.score,
        contract.OUTPUT_MASKS: lambda x, y: _mask_error(x, y) <= tol.mask,
        contract.OUTPUT_KEYPOINT_LOGITS: lambda x, y: _keypoint_error(x, y) <= tol.keypoint,
    }
    for name, value in outputs.items():
        twin = debug.get(name)
        if twin is None or twin.shape != value.shape:
            same = False
        else:
            same = within.get(name, lambda x, y: bool(np.array_equal(x, y)))(twin, value)
        if not same:
            raise InternalError(f"the export's debug twin answers differently in {name!r}")


def float32_noise(refs: list[Reference], refs64: list[Reference]) -> Tolerances:
    """The largest differences between the eager module run in float32 (``refs``) and in
    float64 (``refs64``) on detections paired by position: float32's own error on this model
    and these images, the scale a faithful graph's errors are of."""
    box = score = mask = kp = 0.0
    for r32, r64 in zip(refs, refs64):
        a = Ranked(r32.boxes, r32.scores, r32.labels.astype(np.int64))
        b = Ranked(r64.boxes, r64.scores, r64.labels.astype(np.int64))
        for x, y in pair_by_position(a, b):
            box = max(box, float(np.abs(a.boxes[x] - b.boxes[y]).max()))
            score = max(score, abs(float(a.scores[x]) - float(b.scores[y])))
            if r32.masks is not None and r64.masks is not None:
                mask = max(mask, _mask_error(r32.masks[x], r64.masks[y]))
            if r32.keypoint_logits is not None and r64.keypoint_logits is not None:
                kp = max(kp, _keypoint_error(r32.keypoint_logits[x], r64.keypoint_logits[y]))
    return Tolerances(box_px=box, score=score, mask=mask, keypoint=kp)


def tolerances_for(noise: Tolerances) -> Tolerances:
    """NOISE_FACTOR times float32's measured error, within [TIGHTEST, LOOSEST]."""

    def clip(name: str) -> float:
        value = NOISE_FACTOR * getattr(noise, name)
        return min(max(value, getattr(TIGHTEST, name)), getattr(LOOSEST, name))

    return Tolerances(*(clip(n) for n in ("box_px", "score", "mask", "keypoint")))


@torch.no_grad()
def check_tolerances(
    model: Any, images: torch.Tensor, image_sizes: torch.Tensor, refs: list[Reference]
) -> Tolerances:
    """The tolerances for this model on these images: run the eager module once more in
    float64 and scale float32's error (:func:`tolerances_for`)."""
    model64 = copy.deepcopy(model).double()
    return tolerances_for(
        float32_noise(refs, torchvision_reference(model64, images.double(), image_sizes))
    )


def check_against_eager(
    graph: onnx.ModelProto,
    model: Any,
    inputs: tuple[torch.Tensor, torch.Tensor],
    rebuild: Callable[[bool], onnx.ModelProto],
    min_detections: int = DEFAULT_MIN_DETECTIONS,
) -> EagerCheck:
    """Check ``graph`` (exported from ``model``) on ``inputs`` (images [B, 3, H, W], sizes
    [B, 2]). ``rebuild(with_proposals)`` re-exports ``model`` as it is now: with its score
    thresholds at 0 when the graph itself detects fewer than ``min_detections`` objects, and
    with the debug outputs for the staged comparison when the strict one fails."""
    images, sizes = inputs
    feeds = images.numpy(), sizes.numpy().astype(np.int32)
    outputs = run_graph(graph, *feeds)
    zeroed = int(outputs[contract.OUTPUT_NUM_DETECTIONS].sum()) < min_detections
    with zero_score_thresholds(model) if zeroed else nullcontext():
        if zeroed:
            outputs = run_graph(rebuild(False), *feeds)
        refs = torchvision_reference(model, images, sizes)
        tol = check_tolerances(model, images, sizes, refs)
        strict_failure = None
        forgiven: dict[str, dict[str, int]] = {}
        try:
            paired, *errors = compare(outputs, refs, tol)
            box_err, score_err, mask_err, kp_err = errors
        except MaskrtError as e:
            strict_failure = (
                str(e)
                .removeprefix("the exported graph differs from the eager module ")
                .removesuffix(" (nothing written; --no-check writes it anyway)")
            )
            debug = run_graph(rebuild(True), *feeds)
            _same_graph_outputs(outputs, debug, tol)
            paired, forgiven, errs = staged_check(model, debug, images, sizes, refs, tol)
            box_err, score_err, mask_err, kp_err = errs
    if paired < min_detections:
        how = ", with the score thresholds at 0" if zeroed else ""
        raise MaskrtError(
            f"cannot check the exported graph: only {paired} detections pair up with "
            f"torchvision's on the check images{how} (need {min_detections}); --no-check skips "
            "the check"
        )
    return EagerCheck(
        images=len(refs), paired=paired, box_err=box_err, score_err=score_err,
        mask_err=mask_err, keypoint_err=kp_err, thresholds_zeroed=zeroed, tolerances=tol,
        strict_failure=strict_failure, forgiven=forgiven,
    )  # fmt: skip


# ---------------------------------------------------------------- real check images


def load_check_images(
    model: Any,
    paths: Sequence[str | os.PathLike[str]],
    batch: int | None,
    height: int | None,
    width: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The graph's inputs for the user's own check images: each resized by the model's own
    transform, batched mean-padded into ``images`` [B, 3, H, W] in [0, 1] (H, W the graph's fixed
    size where given), with ``image_sizes`` [B, 2]. Raises MaskrtError (one line) on a file that
    is not an image, or images that do not fit a fixed batch or size."""
    from PIL import Image, UnidentifiedImageError

    if batch is not None and len(paths) != batch:
        raise MaskrtError(
            f"--check-images: the graph's batch is fixed at {batch}; give {batch} images, "
            f"got {len(paths)}"
        )
    tensors = []
    for p in paths:
        try:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise MaskrtError(f"--check-images: cannot read {p} as an image ({e})") from None
        tensors.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0)
    t = model.transform
    resized = [t.resize(x, None)[0] for x in tensors]
    sizes = torch.tensor([list(r.shape[-2:]) for r in resized], dtype=torch.int32)
    canvas = contract.batch_canvas(tuple(r.shape[-2:]) for r in resized)
    h, w = height or canvas[0], width or canvas[1]
    if int(sizes[:, 0].max()) > h or int(sizes[:, 1].max()) > w:
        raise MaskrtError(
            f"--check-images: an image resizes to {tuple(sizes.max(0).values.tolist())}, larger "
            f"than the graph's fixed {h}x{w}"
        )
    mean = torch.tensor(t.image_mean).reshape(3, 1, 1)
    images = mean.expand(len(resized), 3, h, w).clone()
    for i, r in enumerate(resized):
        images[i, :, : r.shape[1], : r.shape[2]] = r
    return images, sizes
