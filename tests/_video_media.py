"""Synthetic videos for the video tests, made here with PyAV (no downloaded media), and a
stand-in Predictor whose detections are a function of the frame's pixels."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from maskrt.detections import Detections
from maskrt.runtime.base import Predictor
from maskrt.specs import demo_spec

MS = Fraction(1, 1000)


def moving_shapes(n: int, seed: int = 5, index: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames [H, W, 3]: a shapes-generator image with copies of its shapes moving
    across it, each at its own speed (the originals stay, so static and moving shapes mix)."""
    from maskrt.training.shapes import generate_image

    base, instances = generate_image(seed, "val", index)
    frames = []
    for t in range(n):
        frame = base.copy()
        for k, inst in enumerate(instances):
            colour = base[inst.mask][0]
            moved = np.roll(inst.mask, ((k + 1) * 2 * t, (3 - k) * 3 * t), axis=(0, 1))
            frame[moved] = colour
        frames.append(frame)
    return frames


def vfr_pts(n: int) -> list[int]:
    """Variable frame rate timestamps in milliseconds: 100 ms then two 40 ms gaps, repeated."""
    return [int(v) for v in np.cumsum([0] + [100 if i % 3 == 0 else 40 for i in range(n - 1)])]


def write_video(
    path: str,
    frames: Sequence[np.ndarray],
    pts: Sequence[int] | None = None,
    *,
    time_base: Fraction = MS,
    lossless: bool = True,
    container_format: str | None = None,
    rotation: int = 0,
) -> None:
    """Encode RGB frames with PyAV: lossless H.264 RGB (libx264rgb, qp 0: decoded frames equal
    ``frames``) or ordinary lossy 4:2:0; ``pts`` in ``time_base`` (default 40 ms apart);
    ``rotation`` a display rotation, degrees counter-clockwise."""
    import av

    pts = list(pts) if pts is not None else [40 * i for i in range(len(frames))]
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=25)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = {"qp": "0"} if lossless else {"preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for image, p in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = p
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


class PixelPredictor(Predictor):
    """A stand-in Predictor: one detection per image, its mask the pixels brighter than the
    image's mean, box around them, score the mean brightness / 255. Optionally slow."""

    backend = "stand-in"

    def __init__(self, delay: float = 0.0) -> None:
        self.spec = demo_spec()
        self.delay = delay
        self.calls: list[int] = []

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import time

        self.calls.append(len(images))
        if self.delay:
            time.sleep(self.delay * len(images))
        return [self.one(image) for image in images]

    @staticmethod
    def one(image: np.ndarray) -> Detections:
        gray = image.astype(np.float32).mean(axis=2)
        mask = gray > gray.mean()
        ys, xs = np.nonzero(mask) if mask.any() else (np.zeros(1, int), np.zeros(1, int))
        box = np.asarray([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return Detections(
            boxes=box,
            scores=np.asarray([gray.mean() / 255], np.float32),
            labels=np.asarray([1], np.int64),
            masks=mask[None],
        )


def serve_tcp(port: int, n: int, delay: float) -> None:
    """Serve ``n`` moving-shapes frames as H.264 in MPEG-TS on tcp://127.0.0.1:``port`` to one
    client, ``delay`` seconds apart (a live stream from this machine); prints "listening"."""
    import time

    import av

    frames = moving_shapes(n)
    print("listening", flush=True)
    with av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv444p"  # odd sizes
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
            time.sleep(delay)
        container.mux(stream.encode(None))
