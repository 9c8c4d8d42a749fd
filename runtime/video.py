"""Video files and streams through any :class:`~maskrt.runtime.base.Predictor`.

    with predict_video(predictor, "clip.mp4", batch_size=2) as run:
        for frame, dets in run:            # VideoFrame (RGB uint8 [H, W, 3], upright), Detections
            ...

Decoding uses PyAV (FFmpeg), the ``video`` extra. The stages run in threads joined by bounded
queues (decode -> [preprocess -> infer -> postprocess] or [predict] -> the caller), so a long or
endless source is never held in memory and throughput approaches the slowest stage; frames come
out in source order. A source that breaks off or turns corrupt yields every frame before the
damage and then raises :class:`VideoDamaged`, naming the frame index.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.detections import Detections
from maskrt.errors import MaskrtError

from .base import GraphPredictor, Predictor
from .postprocess import postprocess
from .preprocess import preprocess

VIDEO_EXTRA_ERROR = 'video input needs the video extra: pip install "maskrt[video]"'
# Sources FFmpeg opens that are not files: capture devices and network streams.
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                   "srt://", "/dev/")  # fmt: skip
# A video may end this many frame intervals (or at least half a second) short of the duration
# its container declares before it counts as cut off: container and stream durations round.
END_SLACK_FRAMES = 2
END_SLACK_SECONDS = 0.5
DEFAULT_QUEUE_SIZE = 4
STREAM_TIMEOUT = 10.0  # seconds a device or stream may send nothing (opening, then each read)
STREAM_PROBE = {
    "analyzeduration": "500000",
    "probesize": "500000",
}  # microseconds, bytes  # batches or frames waiting between two stages


def import_av() -> Any:
    """The ``av`` module, or the one-line error naming the ``video`` extra."""
    try:
        import av
    except ImportError:
        raise MaskrtError(VIDEO_EXTRA_ERROR) from None
    return av


def is_stream(source: str) -> bool:
    """Whether ``source`` names a capture device or a network stream rather than a file."""
    return source.startswith(STREAM_PREFIXES)


class VideoDamaged(MaskrtError):
    """A source broke off or turned corrupt at ``frame_index``; the frames before it were fine."""

    def __init__(self, source: str, frame_index: int, reason: str) -> None:
        super().__init__(f"video {source} is damaged at frame {frame_index}: {reason}")
        self.source = source
        self.frame_index = frame_index
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What a source declares.

    width, height  coded frame size in pixels (frames come out turned upright by their display
                   rotation, which PyAV reads per frame: 90 or 270 degrees swap the two)
    time_base      the unit of the frames' ``pts``
    rate           average frames per second, when known
    frames         frame count the container declares, or None (unknown, a stream)
    duration       seconds the video stream declares, or None
    live           a capture device or network stream: frames may be dropped to keep up
    """

    source: str
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    frames: int | None
    duration: float | None
    live: bool
    codec: str


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: ``index`` counts every decoded frame from 0 (``--stride`` skips keep
    the numbering), ``pts`` is in :attr:`VideoInfo.time_base` (None when the source has none),
    ``time`` in seconds, ``image`` RGB uint8 [H, W, 3] turned upright."""

    index: int
    pts: int | None
    time: float | None
    image: np.ndarray


def _reason(error: BaseException) -> str:
    """An FFmpeg error's words without PyAV's errno prefix and file name."""
    strerror = getattr(error, "strerror", None)
    return str(strerror) if strerror else (str(error).strip().splitlines() or [""])[0]


def _duration_seconds(stream: Any, container: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska's per-track duration, "HH:MM:SS.fffffffff"
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    if len(container.streams) == 1 and container.duration is not None:
        return float(container.duration) / 1e6  # AV_TIME_BASE: microseconds
    return None


def open_video(source: str, live: bool | None = None) -> tuple[Any, Any, VideoInfo]:
    """Open ``source`` (a file, device or URL) and its first video stream: (container, stream,
    info). A one-line :class:`MaskrtError` when it does not exist, FFmpeg cannot open it, or it
    holds no video stream FFmpeg can decode."""
    av = import_av()
    stream_source = is_stream(source)
    if not stream_source and not Path(source).is_file():
        raise MaskrtError(f"video {source} does not exist")
    try:
        container = av.open(
            source,
            mode="r",
            format="v4l2" if source.startswith("/dev/video") else None,
            timeout=STREAM_TIMEOUT if stream_source else None,
            # a live source: probe half a second, not FFmpeg's default five, before the first frame
            options=dict(STREAM_PROBE) if stream_source else {},
        )
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MaskrtError(f"cannot open video {source}: {_reason(e)}") from None
    try:
        if not container.streams.video:
            raise MaskrtError(f"cannot open video {source}: it holds no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.width or not ctx.height:
            raise MaskrtError(f"cannot open video {source}: FFmpeg cannot decode its codec")
        stream.thread_type = "AUTO"  # frame threads: decoding keeps up with the other stages
        frames = int(stream.frames) or None
        rate = stream.average_rate or stream.guessed_rate
        info = VideoInfo(
            source=source,
            width=int(ctx.width),
            height=int(ctx.height),
            time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 1),
            rate=Fraction(rate) if rate else None,
            frames=None if stream_source else frames,
            duration=None if stream_source else _duration_seconds(stream, container),
            live=stream_source if live is None else live,
            codec=str(ctx.name),
        )
    except BaseException:
        container.close()
        raise
    return container, stream, info


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame [H, W, 3] by its display rotation (degrees counter-clockwise, as
    FFmpeg's display matrix and PyAV's ``VideoFrame.rotation`` give it), as players show it."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def _frame_of(frame: Any, index: int) -> VideoFrame:
    image = upright(frame.to_ndarray(format="rgb24"), int(frame.rotation or 0))
    seconds = float(frame.time) if frame.time is not None else None
    return VideoFrame(index=index, pts=frame.pts, time=seconds, image=image)


def decode_frames(
    container: Any, stream: Any, info: VideoInfo, stride: int = 1
) -> Iterator[VideoFrame]:
    """Every ``stride``-th decoded frame, in order; :class:`VideoDamaged` after the last good
    frame when the source breaks off (a demuxer or decoder error, a corrupt packet, fewer frames
    or a shorter run than the container declares)."""
    av = import_av()
    ctx = stream.codec_context
    index = 0
    first_time: float | None = None
    last_time: float | None = None
    damage: str | None = None
    corrupt_frame = False

    def take(frames: Sequence[Any]) -> Iterator[VideoFrame]:
        nonlocal index, first_time, last_time, damage, corrupt_frame
        for frame in frames:
            if frame.is_corrupt:  # the decoder concealed an error in it: not a good frame
                damage, corrupt_frame = damage or "a corrupt frame", True
                return
            if index % stride == 0:
                yield _frame_of(frame, index)
            if frame.time is not None:
                last_time = float(frame.time)
                first_time = last_time if first_time is None else first_time
            index += 1

    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                damage = "a corrupt packet"
                break
            try:
                decoded = ctx.decode(packet)
            except av.error.FFmpegError as e:
                damage = f"cannot decode: {_reason(e)}"
                break
            yield from take(decoded)
            if damage is not None:
                break
    except av.error.ExitError:  # PyAV's timeout interrupted a read
        damage = f"nothing received for {STREAM_TIMEOUT:g} s"
    except av.error.FFmpegError as e:
        damage = f"cannot read: {_reason(e)}"
    if damage is not None:
        reason = damage
        if not corrupt_frame:
            try:  # frames the decoder holds from packets before the damage are good
                yield from take(ctx.decode(None))
            except av.error.FFmpegError:
                pass
        raise VideoDamaged(info.source, index, reason)
    if info.duration is not None and info.rate:
        # the length decoded (from the first frame's time: a stream may start later than 0)
        ran = 0.0 if last_time is None or first_time is None else last_time - first_time
        slack = max(END_SLACK_FRAMES / float(info.rate), END_SLACK_SECONDS)
        if ran + slack < info.duration:
            raise VideoDamaged(
                info.source,
                index,
                f"it ends after {ran:.3f} s of the {info.duration:.3f} s it declares",
            )
    elif info.frames is not None and index < info.frames:
        # only without a duration: an MP4's sample count includes frames its edit list trims,
        # which FFmpeg does not output, so a good trimmed file has fewer than it declares
        raise VideoDamaged(
            info.source, index, f"it ends after {index} of the {info.frames} frames it declares"
        )


# --- the pipeline ---------------------------------------------------------------------------

_END = object()
Stage = tuple[str, Callable[[Any], Any]]


@dataclass
class _Failure:
    error: BaseException


def predictor_stages(predictor: Predictor) -> list[Stage]:
    """The stages a batch of frames goes through, each list[VideoFrame]-carrying tuple in, out:
    a :class:`GraphPredictor` splits into preprocess, infer and postprocess (which overlap in
    the pipeline); any other Predictor is one ``predict`` stage. The last stage returns
    (frames, detections)."""
    if isinstance(predictor, GraphPredictor):
        runner, spec = predictor.runner, predictor.spec

        def pre(frames: list[VideoFrame]) -> tuple[list[VideoFrame], Any]:
            return frames, preprocess([f.image for f in frames], spec, runner.fixed_size)

        def infer(item: tuple[list[VideoFrame], Any]) -> tuple[list[VideoFrame], Any, Any]:
            frames, batch = item
            return frames, batch, runner(batch.images, batch.image_sizes)

        def post(item: tuple[list[VideoFrame], Any, Any]) -> tuple[list[VideoFrame], Any]:
            frames, batch, outputs = item
            return frames, postprocess(outputs, batch)

        return [("preprocess", pre), ("infer", infer), ("postprocess", post)]

    def predict(frames: list[VideoFrame]) -> tuple[list[VideoFrame], list[Detections]]:
        return frames, predictor.predict([f.image for f in frames])

    return [("predict", predict)]


@dataclass
class VideoRun:
    """An iterator over (VideoFrame, Detections) of one source, in frame order; use it as a
    context manager (or call :meth:`close`) so that its threads stop and the source closes.

    ``seconds`` holds the time each stage spent working (decode, each predictor stage),
    ``counts["taken"]`` the frames taken from the source (after the stride), ``dropped`` those a
    live source dropped to keep up.
    """

    info: VideoInfo
    _frames: Iterator[tuple[VideoFrame, Detections]] = field(repr=False)
    _stop: Callable[[], None] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"taken": 0, "dropped": 0})

    def __iter__(self) -> Iterator[tuple[VideoFrame, Detections]]:
        return self._frames

    def __next__(self) -> tuple[VideoFrame, Detections]:
        return next(self._frames)

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> VideoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _timed(name: str, fn: Callable[[Any], Any], seconds: dict[str, float]) -> Callable[[Any], Any]:
    def run(item: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(item)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    return run


def _batches(frames: Iterator[VideoFrame], size: int) -> Iterator[list[VideoFrame]]:
    batch: list[VideoFrame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    predictor: Predictor,
    source: str,
    *,
    stride: int = 1,
    batch_size: int = 1,
    pipeline: bool = True,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    live: bool | None = None,
    opened: tuple[Any, Any, VideoInfo] | None = None,
) -> VideoRun:
    """Detections on every ``stride``-th frame of ``source`` (a video file, device or URL),
    ``batch_size`` frames per predictor call, as a :class:`VideoRun`.

    ``pipeline`` False runs the same stages one after the other in the caller's thread (the
    plain loop, for comparison). ``live`` (default: devices and URLs) drops frames that arrive
    while the decoded-frame queue is full instead of falling behind. ``opened`` is what
    :func:`open_video` returned for ``source``, to open it only once.
    """
    if stride < 1:
        raise MaskrtError(f"stride must be at least 1, got {stride}")
    if batch_size < 1:
        raise MaskrtError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(predictor, GraphPredictor) and predictor.runner.max_batch_size:
        batch_size = min(batch_size, predictor.runner.max_batch_size)
    container, stream, info = opened if opened is not None else open_video(source, live)
    seconds: dict[str, float] = {}
    counts = {"taken": 0, "dropped": 0}
    stages = [(name, _timed(name, fn, seconds)) for name, fn in predictor_stages(predictor)]

    def decoded() -> Iterator[VideoFrame]:
        frames = decode_frames(container, stream, info, stride)
        while True:
            start = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                return
            finally:
                seconds["decode"] = seconds.get("decode", 0.0) + time.perf_counter() - start
            counts["taken"] += 1
            yield frame

    if not pipeline:

        def plain() -> Generator[tuple[VideoFrame, Detections], None, None]:
            for batch in _batches(decoded(), batch_size):
                item: Any = batch
                for _, fn in stages:
                    item = fn(item)
                yield from zip(*item)

        frames = plain()

        def close_plain() -> None:
            frames.close()
            container.close()

        return VideoRun(info, frames, close_plain, seconds, counts)

    stop = threading.Event()
    queues: list[queue.Queue[Any]] = [queue.Queue(queue_size) for _ in range(len(stages) + 1)]

    def put(q: queue.Queue[Any], item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue[Any]) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def decode_worker() -> None:
        out = queues[0]
        try:
            for batch in _batches(decoded(), 1 if info.live else batch_size):
                if stop.is_set():
                    return
                if info.live and out.full():
                    counts["dropped"] += len(batch)  # keep up with a live source
                    continue
                if not put(out, batch):
                    return
        except BaseException as e:  # handed on in order, raised in the caller's thread
            put(out, _Failure(e))
            return
        put(out, _END)

    def stage_worker(
        fn: Callable[[Any], Any], take: Callable[[], Any], out: queue.Queue[Any]
    ) -> None:
        while True:
            item = take()
            if item is _END or isinstance(item, _Failure):
                put(out, item)
                return
            try:
                result = fn(item)
            except BaseException as e:
                put(out, _Failure(e))
                return
            if not put(out, result):
                return

    def live_batches(inbox: queue.Queue[Any]) -> Callable[[], Any]:
        # A live source's frames arrive one at a time: batch what is waiting, never wait for more.
        pending: list[Any] = []

        def take() -> Any:
            if pending:
                return pending.pop()
            batch = get(inbox)
            if batch is _END or isinstance(batch, _Failure):
                return batch
            while len(batch) < batch_size:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is _END or isinstance(more, _Failure):
                    pending.append(more)  # handed on after this batch
                    break
                batch = batch + more
            return batch

        return take

    threads = [threading.Thread(target=decode_worker, name="maskrt-decode", daemon=True)]
    for i, (name, fn) in enumerate(stages):
        inbox = queues[i]
        take = live_batches(inbox) if i == 0 and info.live else functools.partial(get, inbox)
        threads.append(
            threading.Thread(
                target=stage_worker, args=(fn, take, queues[i + 1]), name=f"maskrt-{name}",
                daemon=True,
            )
        )  # fmt: skip
    for t in threads:
        t.start()

    def results() -> Iterator[tuple[VideoFrame, Detections]]:
        while True:
            item = get(queues[-1])
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield from zip(*item)

    def shutdown() -> None:
        stop.set()
        for t in threads[1:]:
            t.join()
        # A live source may block in a read: give it a moment, and leave it to the daemon
        # thread rather than close the container under it.
        threads[0].join(timeout=None if not info.live else 5.0)
        if not threads[0].is_alive():
            container.close()

    return VideoRun(info, results(), shutdown, seconds, counts)
