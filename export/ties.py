"""Where float rounding may legitimately decide, and the rule the export check forgives by.

Two-stage detection inference makes discrete decisions on float values: the RPN's per-level
top-k, the small-box and score filters, NMS (which box ranks first, whether an overlap passes
the threshold) and the cut of a full list. Two correct implementations that sum in another order
(ONNX Runtime's kernels against torch's, AVX2 against AVX-512) can decide a near-tie differently,
and every decision after it follows. So a detection (or proposal) present on one side only is
forgiven when, and only when, it sits at one of these decision points with its two competing
quantities within ``eps`` of each other, ``eps`` being :data:`EPS_FACTOR` times the largest
error measured on the items that do pair up (plus a few float32 ulps, so that an exact tie on
error-free pairs is a tie). Kinds (:data:`KINDS`):

* ``cut``: the other side's list is full and the item's score is not above that list's lowest
  score by more than eps;
* ``threshold``: its score is within eps of the score threshold;
* ``small box``: its smaller side is within eps of the small-box filter's minimum;
* ``top-k`` (proposals): its anchor's objectness is within eps of its level's k-th;
* ``nms``: on the other side a box of its NMS class that ranks at least as high overlaps it by
  about the NMS threshold or more, and the two scores tie, or the overlap ties the threshold, or
  that box is itself forgiven (a decision that followed an earlier tie: ``cascade``).

Everything here is numpy on one image's kept lists: no torch, no graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

BOX_TOL_PX = 0.05  # paired boxes: plus BOX_RTOL of the box's larger side
BOX_RTOL = 1e-3
EPS_FACTOR = 4.0  # eps = EPS_FACTOR x the largest error measured on pairs (+ EPS_ULPS ulps)
EPS_ULPS = 4
KINDS = ("cut", "threshold", "small box", "top-k", "nms", "cascade")
ANY_GROUP = -1  # NMS class unknown: may compete with any


@dataclass(frozen=True)
class Ranked:
    """One side's kept list for one image at one stage: boxes [N, 4] (x1, y1, x2, y2), scores
    [N], groups [N] int (the NMS class: label for detections, FPN level for proposals,
    :data:`ANY_GROUP` where unknown)."""

    boxes: np.ndarray
    scores: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Decisions:
    """One stage's discrete decisions: the list's ``capacity`` (it is cut there), the NMS IoU
    threshold, the small-box filter's minimum side, the score threshold; for proposals the
    per-level k-th objectness probability of the pre-NMS top-k (``topk_cut`` [L], -inf for a
    level with no more than k anchors) and the level and probability of each side's items
    (``topk_level``/``topk_prob``, keyed by side, [N] each; level -1 where not found)."""

    capacity: int
    nms_iou: float
    min_size: float
    score_thresh: float
    topk_cut: np.ndarray | None = None
    topk_level: dict[str, np.ndarray] | None = None
    topk_prob: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Epsilon:
    """Tie widths measured on pairs: relative score error and absolute coordinate error (px)."""

    score_rel: float
    box_px: float

    def score_tie(self, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        """Whether scores ``a`` and ``b`` are within eps of each other (elementwise)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        big = np.maximum(np.abs(a), np.abs(b))
        ulps = EPS_ULPS * np.spacing(big.astype(np.float32)).astype(np.float64)
        return np.abs(a - b) <= EPS_FACTOR * self.score_rel * big + ulps

    def box(self, scale: np.ndarray | float) -> np.ndarray:
        """Coordinate eps (px) at coordinates of magnitude ``scale``."""
        ulps = EPS_ULPS * np.spacing(np.abs(np.asarray(scale, np.float32))).astype(np.float64)
        return EPS_FACTOR * self.box_px + ulps


@dataclass(frozen=True)
class Difference:
    """An item on one side only: ``side`` ('a' or 'b'), its index there, and the kind of
    decision point that explains it (None: unexplained)."""

    side: str
    index: int
    kind: str | None


def box_tolerance(boxes: np.ndarray) -> np.ndarray:
    """How far a paired box [N, 4] may move (px): BOX_TOL_PX plus BOX_RTOL of its larger side."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return BOX_TOL_PX + BOX_RTOL * np.maximum(1.0, sides)


def pair_by_position(a: Ranked, b: Ranked, by_group: bool = True) -> list[tuple[int, int]]:
    """One-to-one (index in a, index in b) pairs (of the same group unless ``by_group`` is
    False) whose boxes agree within :func:`box_tolerance`: each item of ``a``, in descending
    score, takes the nearest free one. Closer than validate's IoU pairing: two different boxes
    are never one moved box."""
    if not len(a) or not len(b):
        return []
    dist = np.abs(a.boxes[:, None].astype(np.float64) - b.boxes[None].astype(np.float64))
    dist = dist.max(-1)
    same = (a.groups[:, None] == b.groups[None]) | (a.groups[:, None] == ANY_GROUP)
    same |= (b.groups[None] == ANY_GROUP) | (not by_group)
    ok = same & (dist <= box_tolerance(a.boxes.astype(np.float64))[:, None])
    taken = np.zeros(len(b), bool)
    pairs = []
    for i in np.argsort(-a.scores, kind="stable"):
        cand = np.where(ok[i] & ~taken, dist[i], np.inf)
        j = int(np.argmin(cand))
        if np.isfinite(cand[j]):
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


def measured_epsilon(pairs: Iterable[tuple[Ranked, Ranked, list[tuple[int, int]]]]) -> Epsilon:
    """The largest relative score error and coordinate error over all ``pairs`` (lists and
    their pairs, any number of images)."""
    score_rel = box_px = 0.0
    for a, b, pp in pairs:
        if not pp:
            continue
        ia, ib = (np.asarray(x) for x in zip(*pp))
        sa, sb = a.scores[ia].astype(np.float64), b.scores[ib].astype(np.float64)
        big = np.maximum(np.maximum(np.abs(sa), np.abs(sb)), np.finfo(np.float32).tiny)
        score_rel = max(score_rel, float((np.abs(sa - sb) / big).max()))
        d = np.abs(a.boxes[ia].astype(np.float64) - b.boxes[ib].astype(np.float64))
        box_px = max(box_px, float(d.max()))
    return Epsilon(score_rel=score_rel, box_px=box_px)


def iou(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """IoU of box ``p`` [4] with boxes ``q`` [M, 4] (float64)."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    w = np.clip(np.minimum(p[2], q[:, 2]) - np.maximum(p[0], q[:, 0]), 0, None)
    h = np.clip(np.minimum(p[3], q[:, 3]) - np.maximum(p[1], q[:, 1]), 0, None)
    inter = w * h
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(p) + area(q) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_eps(p: np.ndarray, q: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """How far IoU(p, q) [M] can move when every coordinate moves by up to ``delta`` px: the
    intersection and each area change by at most 2 delta (w + h) + 4 delta^2."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    w = np.clip(np.minimum(p[2], q[:, 2]) - np.maximum(p[0], q[:, 0]), 0, None)
    h = np.clip(np.minimum(p[3], q[:, 3]) - np.maximum(p[1], q[:, 1]), 0, None)
    grow = lambda ww, hh: 2 * delta * (ww + hh) + 4 * delta * delta  # noqa: E731
    d_inter = grow(w, h)
    d_p = grow(p[2] - p[0], p[3] - p[1])
    d_q = grow(q[:, 2] - q[:, 0], q[:, 3] - q[:, 1])
    inter = w * h
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[:, 2] - q[:, 0]) * (q[:, 3] - q[:, 1]) - inter
    d_union = d_p + d_q + d_inter
    low = np.maximum(union - d_union, 1e-12)
    return (d_inter + iou(p, q) * d_union) / low


def _direct_kind(
    i: int, mine: Ranked, other: Ranked, side: str, rules: Decisions, eps: Epsilon
) -> str | None:
    """The decision point (not a cascade) that explains ``mine[i]`` being absent from ``other``."""
    s, box = float(mine.scores[i]), mine.boxes[i].astype(np.float64)
    if len(other) and len(other) >= rules.capacity:  # the other list is full: it was cut
        lowest = float(other.scores.min())
        if s <= lowest or bool(eps.score_tie(s, lowest)):
            return "cut"
    if rules.score_thresh > 0 and bool(eps.score_tie(s, rules.score_thresh)):
        return "threshold"
    sides = (box[2] - box[0], box[3] - box[1])
    if abs(min(sides) - rules.min_size) <= 2 * float(eps.box(np.abs(box).max())):
        return "small box"
    if rules.topk_cut is not None and rules.topk_level is not None and rules.topk_prob is not None:
        level = int(rules.topk_level[side][i])
        if level >= 0 and np.isfinite(rules.topk_cut[level]):
            prob = float(rules.topk_prob[side][i])
            if bool(eps.score_tie(prob, rules.topk_cut[level])):
                return "top-k"
    return None


def _suppressors(
    i: int, mine: Ranked, other: Ranked, other_lone: np.ndarray, rules: Decisions, eps: Epsilon
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of ``other`` that could have suppressed ``mine[i]`` in NMS (same class, ranked at
    least as high within eps, overlapping about the threshold or more), and whether each one's
    competition with it is itself a tie: the overlap ties the threshold, or the scores tie and
    that box is on the other side only (``other_lone`` [len(other)] bool). A score tie with a
    box both sides kept is no tie: NMS keeps one of two such boxes, and this side kept both (a
    duplicated detection, not rounding)."""
    if not len(other):
        return np.zeros(0, np.int64), np.zeros(0, bool)
    box, s = mine.boxes[i], float(mine.scores[i])
    g = int(mine.groups[i])
    same = (other.groups == g) | (other.groups == ANY_GROUP) | (g == ANY_GROUP)
    delta = eps.box(np.abs(box).max())
    overlap = iou(box, other.boxes)
    width = iou_eps(box, other.boxes, delta)
    score_tie = eps.score_tie(other.scores, s)
    above = (other.scores >= s) | score_tie
    candidates = same & above & (overlap > rules.nms_iou - width)
    tie = (score_tie & other_lone) | (np.abs(overlap - rules.nms_iou) <= width)
    idx = np.flatnonzero(candidates)
    return idx, tie[idx]


def explain(
    a: Ranked, b: Ranked, pairs: list[tuple[int, int]], rules: Decisions, eps: Epsilon
) -> list[Difference]:
    """Every item of ``a`` or ``b`` left out of ``pairs``, each with the decision point that
    explains it (``kind`` None where none does). Cascades are resolved to a fixed point: an item
    suppressed on the other side only by an item that is itself forgiven is forgiven."""
    lists = {"a": a, "b": b}
    used = {"a": {x for x, _ in pairs}, "b": {y for _, y in pairs}}
    lone = {s: [i for i in range(len(lists[s])) if i not in used[s]] for s in lists}
    other_side = {"a": "b", "b": "a"}
    kind: dict[tuple[str, int], str | None] = {}
    sup: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for s, items in lone.items():
        mine, other = lists[s], lists[other_side[s]]
        other_lone = np.zeros(len(other), bool)
        other_lone[lone[other_side[s]]] = True
        for i in items:
            kind[s, i] = _direct_kind(i, mine, other, s, rules, eps)
            sup[s, i] = _suppressors(i, mine, other, other_lone, rules, eps)
            if kind[s, i] is None and bool(sup[s, i][1].any()):
                kind[s, i] = "nms"
    # A box kept only because its suppressor is missing on this side. Not through a cut: the
    # list is cut after NMS, so a box cut on this side still suppressed here.
    changed = True
    while changed:
        changed = False
        for (s, i), k in kind.items():
            if k is not None:
                continue
            t = other_side[s]
            idx, _ = sup[s, i]
            if any(kind.get((t, int(j))) not in (None, "cut") for j in idx):
                kind[s, i] = "cascade"
                changed = True
    return [Difference(s, i, kind[s, i]) for s in ("a", "b") for i in lone[s]]


def count_kinds(differences: Iterable[Difference]) -> dict[str, int]:
    """Forgiven differences by kind, in :data:`KINDS` order (kinds with none left out)."""
    counts = {k: 0 for k in KINDS}
    for d in differences:
        if d.kind is not None:
            counts[d.kind] += 1
    return {k: v for k, v in counts.items() if v}
