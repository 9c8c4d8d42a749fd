"""``maskrt infer`` on a video: an annotated video and the detections as JSON Lines.

Per source, under ``OUT/videos/``: ``NAME.mp4`` (H.264, the frames turned upright, overlays as
``maskrt infer`` draws them, the source's timestamps passed through) and ``NAME.jsonl``: a first
line describing the source, one line per processed frame, written as the frame is done, and a
last status line. Both are written under temporary names and renamed when the run ends (cleanly,
damaged, or interrupted): a file with its final name is complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from maskrt.coco import to_coco_results
from maskrt.errors import MaskrtError
from maskrt.fileio import atomic_path

from .base import Predictor
from .overlay import draw_detections
from .predictor import filter_by_score
from .video import VideoDamaged, VideoInfo, import_av, predict_video

VIDEO_DIR = "videos"
VIDEO_SUFFIX = ".mp4"
JSONL_SUFFIX = ".jsonl"
# x264's speed preset: annotated output for people to watch, on machines where inference needs
# the cores (BENCHMARKS.md, "Video", has what encoding costs).
X264_OPTIONS = {"preset": "veryfast", "crf": "23"}

STATUS_ENDED = "ended"  # the source ended cleanly
STATUS_DAMAGED = "damaged"  # it broke off or turned corrupt (the error names the frame)
STATUS_INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM


@dataclass(frozen=True)
class VideoResult:
    """What one source gave: the files, frames read / written / dropped, and how it ended."""

    source: str
    video: Path | None  # None when no frame was written (no video file; the JSON Lines say why)
    jsonl: Path
    frames_taken: int
    frames_written: int
    frames_dropped: int
    num_detections: int
    status: str
    error: str | None
    seconds: dict[str, float]


def output_stem(source: str) -> str:
    """A file stem for a source: a file's stem, a URL's or device's last path part."""
    tail = source.rstrip("/").rsplit("/", 1)[-1]
    stem = Path(tail).stem if "://" not in source or "/" in source.split("://", 1)[1] else ""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    return stem or "stream"


class AnnotatedVideoWriter:
    """RGB uint8 [H, W, 3] frames -> an H.264 MP4 carrying the source's timestamps.

    The stream opens on the first frame (its size is the upright frame's). Timestamps are the
    source's ``pts`` in its time base, so a variable frame rate and ``--stride`` gaps play as
    they were; a frame without one, or one not after its predecessor (which no encoder accepts),
    gets the next tick after the previous frame.
    """

    def __init__(self, path: Path, info: VideoInfo) -> None:
        av = import_av()
        self.info = info
        # The name is a temporary one: the format is named, not guessed from the suffix.
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream: Any = None
        self.last_pts: int | None = None

    def _open_stream(self, width: int, height: int) -> Any:
        rate = self.info.rate or 25
        stream = self.container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        # 4:2:0 needs even sides; an odd-sized source keeps its size in 4:4:4.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.time_base = self.info.time_base
        stream.codec_context.time_base = self.info.time_base
        stream.options = dict(X264_OPTIONS)
        return stream

    def write(self, image: np.ndarray, pts: int | None, index: int) -> None:
        av = import_av()
        if self.stream is None:
            self.stream = self._open_stream(image.shape[1], image.shape[0])
        if pts is None:
            rate = float(self.info.rate or 25)
            pts = round(index / rate / float(self.info.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and write the index: a playable file (also with no frames)."""
        try:
            if self.stream is not None:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
        finally:
            self.container.close()


def _header(info: VideoInfo) -> dict[str, Any]:
    return {
        "source": info.source,
        "codec": info.codec,
        # as coded: frames, overlays and RLE sizes are turned upright by each frame's rotation
        "coded_width": info.width,
        "coded_height": info.height,
        "time_base": str(info.time_base),
        "frame_rate": None if info.rate is None else float(info.rate),
        "frames": info.frames,
        "duration": info.duration,
        "live": info.live,
    }


def _line(f: IO[str], record: dict[str, Any]) -> None:
    f.write(json.dumps(record, separators=(",", ":")) + "\n")
    f.flush()  # a reader (tail -f) sees every finished frame


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise KeyboardInterrupt in the main thread while the block runs, so
    that a stopped run finishes its files; inside :func:`_held` they wait for its end."""

    def interrupt(signum: int, frame: object) -> None:
        if _HELD.depth:
            _HELD.pending = True
        else:
            raise KeyboardInterrupt

    try:
        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Held:
    """How deep the main thread is in :func:`_held`, and whether an interrupt waits."""

    depth = 0
    pending = False


_HELD = _Held()


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """A block that an interrupt does not cut: a frame's JSON line and its encoded packets go
    out together (an interrupt inside ``encode`` would lose the packets it returned), and the
    encoder's flush completes. The interrupt is taken afterwards by :func:`_take_interrupt`."""
    _HELD.depth += 1
    try:
        yield
    finally:
        _HELD.depth -= 1


def _take_interrupt() -> bool:
    """Whether an interrupt arrived inside :func:`_held` (and forget it)."""
    pending, _HELD.pending = _HELD.pending, False
    return pending


def infer_video(
    predictor: Predictor,
    opened: tuple[Any, Any, VideoInfo],
    video_path: Path,
    jsonl_path: Path,
    *,
    stride: int = 1,
    batch_size: int = 1,
    score_threshold: float = 0.5,
    pipeline: bool = True,
    show_progress: bool = False,
) -> VideoResult:
    """Run ``predictor`` over an opened source (:func:`~maskrt.runtime.video.open_video`) and
    write the annotated video and the JSON Lines. Returns how it went; a damaged source is
    reported in the result (``status``, ``error``), an interruption re-raised once the files are
    finished."""
    from tqdm import tqdm

    info = opened[2]
    total = None if info.frames is None else math.ceil(info.frames / stride)
    status, error, interrupted = STATUS_ENDED, None, False
    written = detections = 0
    with ExitStack() as stack:
        tmp_video = stack.enter_context(atomic_path(video_path))
        tmp_jsonl = stack.enter_context(atomic_path(jsonl_path))
        jsonl = stack.enter_context(open(tmp_jsonl, "w"))
        writer = AnnotatedVideoWriter(tmp_video, info)
        run = predict_video(
            predictor,
            info.source,
            stride=stride,
            batch_size=batch_size,
            pipeline=pipeline,
            opened=opened,
        )
        _line(jsonl, {"video": _header(info)})
        bar = tqdm(total=total, unit="frame", desc=video_path.stem, disable=not show_progress)
        try:
            with run, bar:
                for frame, dets in run:
                    start = time.perf_counter()
                    dets = filter_by_score(dets, score_threshold)
                    results = to_coco_results(frame.index, dets)
                    image = draw_detections(frame.image, dets, predictor.spec)
                    with _held():  # the frame in both files, or in neither
                        _line(jsonl, {"frame": frame.index, "pts": frame.pts,
                                      "time": frame.time, "detections": results})  # fmt: skip
                        writer.write(image, frame.pts, frame.index)
                        written += 1
                        detections += len(results)
                    run.seconds["write"] = (
                        run.seconds.get("write", 0.0) + time.perf_counter() - start
                    )
                    bar.update(1)
                    if _take_interrupt():
                        raise KeyboardInterrupt
        except VideoDamaged as e:
            status, error = STATUS_DAMAGED, str(e)
        except KeyboardInterrupt:
            status, error, interrupted = STATUS_INTERRUPTED, "interrupted", True
        with _held():  # a second interrupt does not cut the flush or the status line
            writer.close()
            _line(
                jsonl,
                {"status": status, "error": error, "frames_taken": run.counts["taken"],
                 "frames_written": written, "frames_dropped": run.counts["dropped"]},
            )  # fmt: skip
        interrupted = _take_interrupt() or interrupted
    if written == 0:  # an MP4 without a frame is no video: the JSON Lines say what happened
        video_path.unlink(missing_ok=True)
    if interrupted:
        raise KeyboardInterrupt
    return VideoResult(
        source=info.source,
        video=video_path if written else None,
        jsonl=jsonl_path,
        frames_taken=run.counts["taken"],
        frames_written=written,
        frames_dropped=run.counts["dropped"],
        num_detections=detections,
        status=status,
        error=error,
        seconds=dict(run.seconds),
    )


def damage_error(results: list[VideoResult]) -> MaskrtError | None:
    """One line for the damaged sources among ``results`` (None when all ended cleanly)."""
    damaged = [r for r in results if r.status == STATUS_DAMAGED]
    if not damaged:
        return None
    first = damaged[0]
    more = f" (and {len(damaged) - 1} more damaged)" if len(damaged) > 1 else ""
    kept = f"kept the {first.frames_written} frames before it in {first.video}"
    return MaskrtError(f"{first.error}; {kept if first.video else 'no frame to keep'}{more}")
