"""``maskrt validate``: one accuracy table for every precision and backend, usable as a CI gate.

From a checkpoint, the pipeline makes every artifact in ``out`` (the deploy graph, its surgered
version, the FP16 and INT8 graphs, TensorRT engines where TensorRT exists), runs each over a
COCO-format set and compares it with PyTorch FP32, the reference:

* bbox / segm (/ keypoints) AP and its delta to PyTorch in AP points,
* per-detection differences: each reference detection is matched to the row's detection of the
  same label with the highest IoU (> 0.5); mean and 95th percentile of the mean absolute box
  coordinate difference (pixels) and of the absolute score difference, the matched fraction, and
  the matched fraction of the confident reference detections (score >= 0.5) alone: low-score
  detections come and go with any rounding, confident ones should not,
* mean latency per image (one image per call, after one warm-up call).

A row fails when ``|delta AP|`` of any IoU type exceeds its precision's tolerance; with
``max_ap_drop`` D (``--max-ap-drop``, the budget of ``maskrt calibrate --max-ap-drop``) an INT8
row fails only when AP drops by more than D (a gain is no failure). AP is a
statistic of the evaluated images: on a few dozen it is noise-dominated, so gate on a hundred or
more (measured in calibration/README.md, "How many calibration images, and how many to evaluate
on").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections, match_detections
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_write_text
from maskrt.specs import ModelSpec

DEFAULT_TOLERANCES: dict[str, float] = {"fp32": 0.1, "fp16": 0.3, "int8": 1.5}
CONFIDENT_SCORE = 0.5


@dataclass
class Row:
    """One line of the table. AP values are in [0, 1]; deltas and tolerances in AP points."""

    name: str
    precision: str  # fp32 | fp16 | int8 (tolerance class)
    backend: str
    artifact: str = ""
    ap: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    box_diff_mean: float | None = None
    box_diff_p95: float | None = None
    score_diff_mean: float | None = None
    score_diff_p95: float | None = None
    matched: float | None = None
    matched_confident: float | None = None
    latency_ms: float | None = None
    tolerance: float | None = None
    drop_only: bool = False  # the tolerance bounds AP drops only (INT8 with --max-ap-drop)
    passed: bool | None = None  # None: reference row or skipped
    note: str = ""
    groups: dict[str, str] = field(default_factory=dict)  # INT8 graph: group -> int8 | fp16

    @property
    def skipped(self) -> bool:
        return not self.ap

    def gate(self) -> bool:
        """Whether every ΔAP is within the tolerance (only drops count with ``drop_only``)."""
        return not any(
            _exceeds(d, self.tolerance or 0.0, self.drop_only) for d in self.delta.values()
        )


@dataclass
class ValidationReport:
    rows: list[Row]
    num_images: int
    iou_types: list[str]

    @property
    def failures(self) -> list[str]:
        """One line per failed row: what exceeded which tolerance, or why it did not run."""
        out = []
        for r in self.rows:
            if r.passed is False:
                over = [
                    f"{t} {r.delta[t]:+.2f}"
                    for t in r.delta
                    if _exceeds(r.delta[t], r.tolerance or 0.0, r.drop_only)
                ]
                why = ", ".join(over) if over else r.note
                kind = "allowed drop" if r.drop_only else "tolerance"
                out.append(f"{r.name}: {why} ({kind} {r.tolerance} AP points)")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def markdown(self) -> str:
        """The table as GitHub Markdown (AP in %, deltas in AP points)."""
        head = ["artifact", "backend"]
        head += [f"{t} AP" for t in self.iou_types] + [f"Δ{t}" for t in self.iou_types]
        head += ["box Δ mean/p95 (px)", "score Δ mean/p95", "matched all/≥0.5"]
        head += ["ms/img", "tol", "result"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            if r.skipped:
                cells = [r.name, r.backend] + ["–"] * (len(head) - 3) + [f"skipped: {r.note}"]
            else:
                cells = [r.name, r.backend]
                cells += [f"{100 * r.ap[t]:.2f}" for t in self.iou_types]
                cells += [
                    "ref" if r.passed is None else f"{r.delta[t]:+.2f}" for t in self.iou_types
                ]
                cells += [
                    _pair(r.box_diff_mean, r.box_diff_p95, 3),
                    _pair(r.score_diff_mean, r.score_diff_p95, 4),
                    _percent_pair(r.matched, r.matched_confident),
                    "–" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                    _tolerance_cell(r),
                    "reference" if r.passed is None else ("pass" if r.passed else "FAIL"),
                ]
                if r.note:
                    cells[-1] += f" ({r.note})"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"{self.num_images} images; Δ = AP − PyTorch AP in AP points.")
        lines += [f"{r.name} groups: {_groups_line(r.groups)}." for r in self.rows if r.groups]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "iou_types": self.iou_types,
            "passed": self.passed,
            "failures": self.failures,
            "rows": [asdict(r) for r in self.rows],
        }


def _exceeds(delta: float, tolerance: float, drop_only: bool) -> bool:
    return (-delta if drop_only else abs(delta)) > tolerance + 1e-9


def _tolerance_cell(r: Row) -> str:
    if r.tolerance is None:
        return "–"
    return f"drop ≤{r.tolerance:g}" if r.drop_only else f"{r.tolerance:g}"


def _groups_line(groups: Mapping[str, str]) -> str:
    return ", ".join(f"{g} {p.upper()}" for g, p in groups.items())


def _percent_pair(a: float | None, b: float | None) -> str:
    return " / ".join("–" if v is None else f"{100 * v:.1f}%" for v in (a, b))


def _pair(a: float | None, b: float | None, digits: int) -> str:
    return "–" if a is None or b is None else f"{a:.{digits}f} / {b:.{digits}f}"


def parse_tolerances(text: str | None) -> dict[str, float]:
    """``"fp32=0.1,fp16=0.3,int8=1.5"`` (any subset) over the defaults."""
    tol = dict(DEFAULT_TOLERANCES)
    if not text:
        return tol
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in tol:
            raise MaskrtError(
                f"bad --tolerance item {item!r}; expected e.g. fp32=0.1,fp16=0.3,int8=1.5"
            )
        try:
            tol[key] = float(value)
        except ValueError:
            raise MaskrtError(f"bad --tolerance value {value!r} for {key}") from None
        if tol[key] < 0:
            raise MaskrtError(f"--tolerance {key} must not be negative")
    return tol


# ---------------------------------------------------------------------------- detection matching


@dataclass(frozen=True)
class DetectionDiffs:
    """Per matched detection: mean |box coordinate difference| (px) and |score difference|;
    how many reference detections (and confident ones, score >= ``CONFIDENT_SCORE``) matched."""

    box: np.ndarray
    score: np.ndarray
    matched: int
    reference: int
    confident_matched: int = 0
    confident: int = 0

    def summary(self) -> dict[str, float | None]:
        def stat(v: np.ndarray, f: Callable[[np.ndarray], Any]) -> float | None:
            return float(f(v)) if v.size else None

        return {
            "box_diff_mean": stat(self.box, np.mean),
            "box_diff_p95": stat(self.box, lambda v: np.percentile(v, 95)),
            "score_diff_mean": stat(self.score, np.mean),
            "score_diff_p95": stat(self.score, lambda v: np.percentile(v, 95)),
            "matched": self.matched / self.reference if self.reference else None,
            "matched_confident": (
                self.confident_matched / self.confident if self.confident else None
            ),
        }


def detection_diffs(
    reference: Mapping[int, Detections], other: Mapping[int, Detections]
) -> DetectionDiffs:
    """Differences of ``other`` to ``reference`` over the images both hold."""
    box, score = [], []
    matched = total = confident_matched = confident = 0
    for image_id, ref in reference.items():
        total += len(ref)
        confident += int((ref.scores >= CONFIDENT_SCORE).sum())
        dets = other.get(image_id)
        if dets is None:
            continue
        for i, j in match_detections(ref, dets):
            box.append(float(np.abs(ref.boxes[i].astype(np.float64) - dets.boxes[j]).mean()))
            score.append(abs(float(ref.scores[i]) - float(dets.scores[j])))
            matched += 1
            confident_matched += int(ref.scores[i] >= CONFIDENT_SCORE)
    return DetectionDiffs(
        np.asarray(box), np.asarray(score), matched, total, confident_matched, confident
    )


# ---------------------------------------------------------------------------- running artifacts


@dataclass
class _Run:
    detections: dict[int, Detections]
    latency_ms: float


def run_artifact(
    artifact: str | os.PathLike[str],
    backend: str,
    paths: Sequence[Path],
    image_ids: Sequence[int],
    show_progress: bool = False,
    desc: str = "",
    options: Mapping[str, Any] | None = None,
) -> _Run:
    """Detections of every image (one per call) and the mean latency of ``predict``
    (``options``: the backend's, see :func:`maskrt.runtime.load_predictor`)."""
    from tqdm import tqdm

    from maskrt.runtime import load_predictor
    from maskrt.runtime.images import read_image

    detections: dict[int, Detections] = {}
    total = 0.0
    with load_predictor(artifact, backend=backend, **(options or {})) as predictor:
        predictor.predict([read_image(paths[0])])  # warm-up: sessions allocate on first use
        for image_id, p in tqdm(list(zip(image_ids, paths)), desc=desc, unit="img",
                                disable=not show_progress):  # fmt: skip
            image = read_image(p)
            start = time.perf_counter()
            detections[image_id] = predictor.predict([image])[0]
            total += time.perf_counter() - start
    return _Run(detections, 1000.0 * total / len(paths))


@dataclass(frozen=True)
class _Plan:
    """An artifact to evaluate: how to make it (or None: it exists) and how to score it."""

    name: str
    precision: str
    backend: str
    path: Path
    make: Callable[[], object] | None
    options: Mapping[str, Any] = field(default_factory=dict)


def _plans(
    checkpoint: Path,
    spec: ModelSpec,
    model: Any,
    out: Path,
    calib_dir: Path,
    calib_images: int,
    method: str,
    with_trt: bool,
    show_progress: bool,
    factory: Mapping[str, Any],
    fp16_groups: str | None = None,
) -> list[_Plan]:
    """The artifacts of the table, made with `maskrt convert`'s own steps and file names."""
    from .convert import ArtifactPaths, build_step, export_step, precision_step, surgery_step

    paths = ArtifactPaths(out)
    fp32 = paths.fp32

    def make_precision(precision: str) -> Callable[[], None]:
        return lambda: precision_step(
            fp32, paths.graph(precision), precision, calib_dir, method, calib_images,
            paths.calibration_cache, show_progress, fp16_groups,
        )  # fmt: skip

    plans = [
        _Plan("PyTorch FP32", "fp32", "torch", checkpoint, None, factory),
        _Plan("ONNX FP32", "fp32", "onnxruntime", fp32, lambda: export_step(spec, model, fp32)),
        _Plan("ONNX FP32 surgered", "fp32", "onnxruntime", paths.surgered("fp32"),
              lambda: surgery_step(fp32, paths.surgered("fp32"))),
        _Plan("ONNX FP16", "fp16", "onnxruntime", paths.graph("fp16"), make_precision("fp16")),
        _Plan(f"ONNX INT8 ({method})", "int8", "onnxruntime", paths.graph("int8"),
              make_precision("int8")),
    ]  # fmt: skip
    if with_trt:
        for precision in ("fp32", "fp16", "int8"):

            def make(precision: str = precision) -> None:
                if not paths.surgered(precision).exists():
                    surgery_step(paths.graph(precision), paths.surgered(precision))
                build_step(paths.surgered(precision), paths.engine(precision))

            plans.append(
                _Plan(f"TensorRT {precision.upper()}", precision, "tensorrt",
                      paths.engine(precision), make)
            )  # fmt: skip
    return plans


def int8_group_precisions(graph: Path, fp32: Path) -> dict[str, str]:
    """Group -> precision of the INT8 ONNX graph ``graph``: its metadata, else (made without
    FP16 groups) every group of its FP32 deploy graph ``fp32`` in INT8."""
    from maskrt.calibration.groups import find_groups, group_precisions
    from maskrt.calibration.regions import find_regions
    from maskrt.onnxio import load_onnx, metadata

    recorded = group_precisions(metadata(load_onnx(graph, weights=False)))
    if recorded:
        return recorded
    model = load_onnx(fp32)
    return {g: "int8" for g in find_groups(model, find_regions(model))}


def validate(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tolerances: Mapping[str, float] | None = None,
    calib_images: int = 512,
    limit: int | None = None,
    method: str = "entropy",
    show_progress: bool = False,
    factory: str | None = None,
    factory_args: dict[str, Any] | None = None,
    fp16_groups: str | None = None,
    max_ap_drop: float | None = None,
) -> ValidationReport:
    """Make every artifact of ``checkpoint`` in ``out``, evaluate each on the val split of the
    maskrt dataset root ``data`` (calibrating INT8 on its train split) and write the table to
    ``out/validation.md`` and ``out/validation.json``. Does not raise on a failed tolerance:
    check :attr:`ValidationReport.passed`. ``fp16_groups`` keeps those groups of the INT8 graph
    in FP16 (``maskrt calibrate --fp16-groups``); INT8 rows list every group's precision.
    ``max_ap_drop`` gates INT8 rows on their AP drop alone (instead of ``tolerances["int8"]``)."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.coco import evaluate_detections, iou_types_for, load_coco, split_paths

    from .convert import ArtifactPaths, tensorrt_missing

    tol = dict(DEFAULT_TOLERANCES, **(tolerances or {}))
    if max_ap_drop is not None:
        if not max_ap_drop >= 0:
            raise MaskrtError(f"--max-ap-drop must be at least 0 AP points, got {max_ap_drop}")
        tol["int8"] = max_ap_drop
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise MaskrtError(f"checkpoint {ckpt} does not exist")
    images_dir, ann_file = split_paths(data, "val")
    calib_dir = Path(data) / "train"
    if not calib_dir.is_dir():
        raise MaskrtError(f"{data} has no train/ split to calibrate INT8 on")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    spec, model = load_checkpoint(ckpt, factory=factory, factory_args=factory_args)
    factory_options = {"factory": factory, "factory_args": factory_args} if factory else {}
    iou_types = iou_types_for(spec.has_masks, spec.has_keypoints)
    coco_gt = load_coco(ann_file)
    image_ids = sorted(coco_gt.getImgIds())[: limit if limit else None]
    if not image_ids:
        raise MaskrtError(f"{ann_file} lists no images")
    paths = [images_dir / coco_gt.imgs[i]["file_name"] for i in image_ids]

    trt_note = tensorrt_missing()
    plans = _plans(
        ckpt, spec, model, out_dir, calib_dir, calib_images, method, trt_note is None,
        show_progress, factory_options, fp16_groups,
    )  # fmt: skip
    rows: list[Row] = []
    reference: dict[int, Detections] | None = None
    ref_ap: dict[str, float] = {}
    for plan in plans:
        row = Row(plan.name, plan.precision, plan.backend, str(plan.path))
        rows.append(row)
        try:
            if plan.make is not None:
                plan.make()
            run = run_artifact(
                plan.path, plan.backend, paths, image_ids, show_progress, plan.name, plan.options
            )
        except MaskrtError as e:
            if reference is None:
                raise  # no reference, no table
            row.note, row.passed, row.tolerance = str(e), False, tol[plan.precision]
            continue
        scores, _ = evaluate_detections(
            coco_gt, run.detections, with_masks="segm" in iou_types,
            with_keypoints="keypoints" in iou_types,
        )  # fmt: skip
        row.ap = {t: scores.stats[t]["AP"] for t in iou_types}
        if plan.precision == "int8" and plan.path.suffix == ".onnx":
            row.groups = int8_group_precisions(plan.path, ArtifactPaths(out_dir).fp32)
        row.latency_ms = run.latency_ms
        if reference is None:
            reference, ref_ap = run.detections, row.ap
            continue
        row.delta = {t: 100.0 * (row.ap[t] - ref_ap[t]) for t in iou_types}
        for k, v in detection_diffs(reference, run.detections).summary().items():
            setattr(row, k, v)
        row.tolerance = tol[plan.precision]
        row.drop_only = max_ap_drop is not None and plan.precision == "int8"
        row.passed = row.gate()
    if trt_note is not None:
        rows.append(Row("TensorRT engines", "fp32", "tensorrt", note=trt_note))

    report = ValidationReport(rows, len(image_ids), iou_types)
    atomic_write_text(out_dir / "validation.md", report.markdown())
    atomic_write_text(out_dir / "validation.json", json.dumps(report.to_dict(), indent=1))
    return report
