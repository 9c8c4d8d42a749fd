"""``calibrate --max-ap-drop D``: the fewest groups kept out of INT8 (in FP16) so that the
graph's AP drop against FP32 stays within D AP points, for every IoU type.

AP on a couple of hundred images moves by about a point between random subsets
(calibration/README.md), far more than one group's effect, so groups are not ranked by AP:

1. Evaluation images (a COCO-format val split) are split in two, alternately by image id: the
   *choice* half decides, the *report* half reports.
2. The FP32 graph runs once on all of them: the reference.
3. The all-INT8 graph runs on the choice half. Its AP drop within D: done, every group INT8.
4. Otherwise each group's *cost* is measured with it alone in INT8 (all others FP16): the
   score-weighted disagreement of the graph's detections with FP32's on the same images
   (:func:`disagreement`), a paired measurement that needs no labels and barely moves between
   image sets.
5. Groups go to FP16 costliest first; after each step AP on the choice half confirms; the first
   graph whose drop is within D is the answer.
6. The answer and the all-INT8 graph are scored on the report half, with a paired bootstrap
   interval of ΔAP (:mod:`maskrt.calibration.bootstrap`).

Calibration runs once: every trial reads the ranges from the calibration cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections, box_iou, match_detections
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path, atomic_write_text, check_writable

from .bootstrap import PairedDelta, PerImageEval, paired_deltas, per_image_eval

MIN_EVAL_IMAGES = 4


@dataclass
class GroupResult:
    """One group: its cost alone in INT8 (None: not needed) and the precision chosen."""

    group: str
    cost: float | None
    precision: str


@dataclass
class Trial:
    """A graph tried on the choice half: its FP16 groups, disagreement and ΔAP (AP points)."""

    fp16_groups: list[str]
    disagreement: float
    delta: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchReport:
    """What ``--max-ap-drop`` found; written as JSON beside the graph."""

    graph: str
    max_ap_drop: float
    groups: list[GroupResult]
    fp16_groups: list[str]
    choice_images: int
    report_images: int
    choice_delta: dict[str, float]
    final: dict[str, PairedDelta]
    all_int8: dict[str, PairedDelta]
    trials: list[Trial]
    seconds: float
    int8_mac_share: float = 0.0  # of the matrix layers' MACs (square input at min_size)
    all_int8_mac_share: float = 0.0  # the same without FP16 groups (prediction layers are FP32)

    @property
    def met(self) -> bool:
        """Whether the answer's AP drop on the report half is within D (point estimate)."""
        return all(-d.delta <= self.max_ap_drop + 1e-9 for d in self.final.values())

    def table(self) -> str:
        """The terminal table: one line per group, then ΔAP with its 95 % interval."""
        lines = [f"{'group':<12}{'cost alone INT8':>16}  precision"]
        for g in self.groups:
            cost = "–" if g.cost is None else f"{g.cost:.4f}"
            lines.append(f"{g.group:<12}{cost:>16}  {g.precision.upper()}")
        lines.append(
            f"ΔAP vs FP32 (AP points, report half: {self.report_images} images, paired "
            f"bootstrap 95 % interval; chosen on the other {self.choice_images}):"
        )
        for name, deltas in (("chosen", self.final), ("all INT8", self.all_int8)):
            cells = ", ".join(
                f"{t} {d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" for t, d in deltas.items()
            )
            lines.append(f"  {name:<9}{cells}")
        verdict = "within" if self.met else "NOT within"
        lines.append(
            f"budget {self.max_ap_drop:g} AP points: {verdict}; FP16 groups: "
            f"{', '.join(self.fp16_groups) or 'none'}; {100 * self.int8_mac_share:.1f} % of the "
            f"matrix MACs in INT8 (all-INT8 graph {100 * self.all_int8_mac_share:.1f} %); "
            f"{len(self.trials)} trials, {self.seconds:.0f} s"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["final"] = {t: v.to_dict() for t, v in self.final.items()}
        d["all_int8"] = {t: v.to_dict() for t, v in self.all_int8.items()}
        d["met"] = self.met
        return d


def report_path(graph: str | os.PathLike[str]) -> Path:
    """Where the search report of ``graph`` goes: ``m.int8.onnx`` -> ``m.int8.search.json``."""
    return Path(graph).with_suffix(".search.json")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 1.0


def disagreement(reference: Mapping[int, Detections], other: Mapping[int, Detections]) -> float:
    """Score-weighted disagreement in [0, 1] of ``other`` with ``reference`` on the same images.

    Each detection weighs its score. A reference detection matched (same label, IoU > 0.5,
    :func:`~maskrt.detections.match_detections`) costs 1 − IoU (the mean of box and mask IoU
    where there are masks); an unmatched detection of either side costs 1.
    """
    num = den = 0.0
    for image_id, ref in reference.items():
        dets = other[image_id]
        pairs = match_detections(ref, dets)
        matched_ref = {i for i, _ in pairs}
        matched_other = {j for _, j in pairs}
        for i, j in pairs:
            agree = float(box_iou(ref.boxes[i : i + 1], dets.boxes[j : j + 1])[0, 0])
            if ref.masks is not None and dets.masks is not None:
                agree = 0.5 * (agree + _mask_iou(ref.masks[i], dets.masks[j]))
            w = float(ref.scores[i])
            num += w * (1.0 - agree)
            den += w
        for scores, matched in ((ref.scores, matched_ref), (dets.scores, matched_other)):
            unmatched = [float(s) for k, s in enumerate(scores) if k not in matched]
            num += sum(unmatched)
            den += sum(unmatched)
    return num / den if den else 0.0


def _run(graph: Path, paths: Sequence[Path], ids: Sequence[int]) -> dict[int, Detections]:
    from maskrt.runtime import load_predictor
    from maskrt.runtime.images import read_image

    with load_predictor(graph, backend="onnxruntime") as predictor:
        return {i: predictor.predict([read_image(p)])[0] for i, p in zip(ids, paths)}


def _evals(
    coco_gt: Any, dets: Mapping[int, Detections], ids: Sequence[int], iou_types: Sequence[str]
) -> dict[str, PerImageEval]:
    from maskrt.coco import to_coco_results

    results = [r for i in ids for r in to_coco_results(i, dets[i])]
    return {t: per_image_eval(coco_gt, results, t, ids) for t in iou_types}


def _point_delta(cand: Mapping[str, PerImageEval], ref: Mapping[str, PerImageEval]) -> dict:
    from .bootstrap import pooled_ap

    n = len(next(iter(ref.values())).entries[0])
    every = np.arange(n)
    return {t: 100.0 * (pooled_ap(cand[t], every) - pooled_ap(ref[t], every)) for t in ref}


def _int8_mac_share(
    model: Any, regions: Any, groups: dict[str, set[int]], fp16: Sequence[str], spec: Any
) -> float:
    """The share of the groups' matrix-layer MACs that run in INT8 with ``fp16`` in FP16."""
    from maskrt.contract import round_to_divisible

    from .groups import matrix_macs
    from .regions import int8_nodes

    macs = matrix_macs(
        model, groups, round_to_divisible(spec.min_size), spec.rpn_post_nms_top_n_test,
        spec.box_detections_per_img,
    )  # fmt: skip
    kept = {i for g in fp16 for i in groups[g]}
    quantized = set(int8_nodes(model, regions))
    int8 = sum(
        v for i, v in macs.items() if model.graph.node[i].name in quantized and i not in kept
    )
    total = sum(macs.values())
    return int8 / total if total else 0.0


def search_fp16_groups(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calib_data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    eval_data: str | os.PathLike[str],
    max_ap_drop: float,
    method: str = "entropy",
    max_images: int = 512,
    eval_images: int = 200,
    cache: str | os.PathLike[str] | None = None,
    force: bool = False,
    show_progress: bool = False,
    resamples: int = 1000,
) -> SearchReport:
    """Write to ``dst`` the INT8 graph of ``src`` with the fewest FP16 groups whose AP drop
    against ``src`` (FP32) is within ``max_ap_drop`` AP points on the choice half of the first
    ``eval_images`` val images of the maskrt dataset root ``eval_data`` (see the module
    docstring), and its report (:func:`report_path`); returns the report."""
    from tqdm import tqdm

    from maskrt.coco import iou_types_for, load_coco, split_paths
    from maskrt.onnxio import load_onnx, metadata, spec_from_metadata

    from .groups import find_groups
    from .int8 import quantize_to_int8
    from .regions import find_regions, fold_identity_constants, name_nodes

    start = time.perf_counter()
    if not max_ap_drop >= 0:
        raise MaskrtError(f"--max-ap-drop must be at least 0 AP points, got {max_ap_drop}")
    check_writable(dst, force)
    check_writable(report_path(dst), force)
    images_dir, ann_file = split_paths(eval_data, "val")
    coco_gt = load_coco(ann_file)
    ids = sorted(coco_gt.getImgIds())[:eval_images]
    if len(ids) < MIN_EVAL_IMAGES:
        raise MaskrtError(f"{ann_file} has {len(ids)} images; the search needs at least 4")
    choice, report = ids[0::2], ids[1::2]
    paths = {i: images_dir / coco_gt.imgs[i]["file_name"] for i in ids}

    model = load_onnx(src, deploy_graph=True)
    spec = spec_from_metadata(metadata(model), str(src))
    iou_types = iou_types_for(spec.has_masks, spec.has_keypoints)
    fold_identity_constants(model)
    name_nodes(model)
    regions = find_regions(model)
    groups = find_groups(model, regions)
    names = list(groups)

    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="maskrt-search-") as tmp:
        ranges = Path(cache) if cache else Path(tmp) / "ranges.json"
        bar = tqdm(desc="search", unit="graph", disable=not show_progress)

        def build(fp16: Sequence[str], out: Path) -> Path:
            quantize_to_int8(
                src, out, calib_data, method=method, max_images=max_images, cache=ranges,
                force=True, fp16_groups=list(fp16),
            )  # fmt: skip
            bar.update(1)
            return out

        def run(graph: Path, which: Sequence[int]) -> dict[int, Detections]:
            return _run(graph, [paths[i] for i in which], which)

        reference = _run(Path(src), [paths[i] for i in ids], ids)
        ref_choice = _evals(coco_gt, reference, choice, iou_types)

        def trial(fp16: Sequence[str], with_ap: bool) -> Trial:
            dets = run(build(fp16, Path(tmp) / "trial.onnx"), choice)
            t = Trial(list(fp16), disagreement({i: reference[i] for i in choice}, dets))
            if with_ap:
                t.delta = _point_delta(_evals(coco_gt, dets, choice, iou_types), ref_choice)
            trials.append(t)
            return t

        def within(t: Trial) -> bool:
            return all(-d <= max_ap_drop + 1e-9 for d in t.delta.values())

        costs: dict[str, float] = {}
        chosen: list[str] = []
        best = trial([], with_ap=True)
        if not within(best):
            for g in names:
                costs[g] = trial([h for h in names if h != g], with_ap=False).disagreement
            ranked = sorted(names, key=lambda g: -costs[g])
            for k in range(1, len(names) + 1):
                chosen = [g for g in names if g in ranked[:k]]  # graph order
                best = trial(chosen, with_ap=True)
                if within(best):
                    break
        # built aside and moved into place with its report, so that ``dst`` never exists
        # without the report that says what it is (an interrupted report phase leaves nothing)
        chosen_graph = build(chosen, Path(tmp) / "chosen.onnx")
        ref_report = _evals(coco_gt, reference, report, iou_types)
        final_dets = run(chosen_graph, report)
        final = paired_deltas(
            _evals(coco_gt, final_dets, report, iou_types), ref_report, resamples=resamples
        )
        if chosen:
            all_int8_dets = run(build([], Path(tmp) / "all-int8.onnx"), report)
        else:
            all_int8_dets = final_dets
        all_int8 = paired_deltas(
            _evals(coco_gt, all_int8_dets, report, iou_types), ref_report, resamples=resamples
        )
        bar.close()
        int8_share = _int8_mac_share(model, regions, groups, chosen, spec)
        result = SearchReport(
            graph=str(dst),
            max_ap_drop=max_ap_drop,
            groups=[GroupResult(g, costs.get(g), "fp16" if g in chosen else "int8") for g in names],
            fp16_groups=chosen,
            choice_images=len(choice),
            report_images=len(report),
            choice_delta=best.delta,
            final=final,
            all_int8=all_int8,
            trials=trials,
            seconds=time.perf_counter() - start,
            int8_mac_share=int8_share,
            all_int8_mac_share=_int8_mac_share(model, regions, groups, [], spec),
        )
        with atomic_path(dst) as placed:
            shutil.copyfile(chosen_graph, placed)
        atomic_write_text(report_path(dst), json.dumps(result.to_dict(), indent=1))
    return result
