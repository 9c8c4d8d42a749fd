"""Video sources in ``maskrt infer`` and :func:`maskrt.runtime.video.predict_video`.

Every video is made here from the shapes generator and encoded with PyAV; lossless H.264 RGB,
so the decoded frames equal the generated ones and the oracle is the predictor (or
``maskrt infer`` on PNGs) run on the generated frames themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

av = pytest.importorskip("av")

from _video_media import PixelPredictor, moving_shapes, vfr_pts, write_video  # noqa: E402
from PIL import Image  # noqa: E402

from maskrt.coco import to_coco_results  # noqa: E402
from maskrt.errors import MaskrtError  # noqa: E402
from maskrt.pipeline.main import main  # noqa: E402
from maskrt.runtime.predictor import filter_by_score, load_predictor  # noqa: E402
from maskrt.runtime.video import VideoDamaged, import_av, predict_video  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decoded_times(path: Path) -> tuple[list[float], tuple[int, int]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.time) for f in c.decode(s)], (s.height, s.width)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo model exported to a deploy ONNX graph (a few seconds)."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export.exporter import export_onnx
    from maskrt.training.shipped import shipped_demo_checkpoint

    spec, model = load_checkpoint(shipped_demo_checkpoint())
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(model, path, spec=spec, progress=False)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], list[int]]:
    """12 frames of moving shapes at a variable frame rate, lossless, in Matroska."""
    frames = moving_shapes(12)
    pts = vfr_pts(12)
    path = tmp_path_factory.mktemp("clip") / "shapes.mkv"
    write_video(str(path), frames, pts)
    return path, frames, pts


def test_decoded_frames_are_the_generated_ones(clip: Any) -> None:
    """The oracle's premise: the lossless video decodes to exactly the generated frames."""
    path, frames, pts = clip
    with predict_video(PixelPredictor(), str(path)) as run:
        got = list(run)
    assert [f.index for f, _ in got] == list(range(12))
    assert [f.pts for f, _ in got] == pts
    assert all(np.array_equal(f.image, g) for (f, _), g in zip(got, frames))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_video_detections_equal_infer_on_each_frame(
    tmp_path: Path, demo_onnx: Path, clip: Any, batch_size: int
) -> None:
    """`maskrt infer` on the video equals `maskrt infer` on its frames saved as PNG (same
    batching), frame by frame, in order, with the source's timestamps; the annotated video has
    every frame at the source's times and size."""
    path, frames, pts = clip
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(pngs / f"f{i:03d}.png")
    common = ["--batch-size", str(batch_size), "--no-progress"]
    done = CliRunner().invoke(
        main, ["infer", str(demo_onnx), str(path), "-o", str(tmp_path / "v"), *common]
    )
    assert done.exit_code == 0, done.output
    ref = CliRunner().invoke(
        main, ["infer", str(demo_onnx), str(pngs), "-o", str(tmp_path / "i"), *common]
    )
    assert ref.exit_code == 0, ref.output

    lines = _jsonl(tmp_path / "v" / "videos" / "shapes.jsonl")
    header, records, status = lines[0]["video"], lines[1:-1], lines[-1]
    assert header["coded_width"] == frames[0].shape[1] and header["time_base"] == "1/1000"
    assert status == {"status": "ended", "error": None, "frames_taken": 12, "frames_written": 12,
                      "frames_dropped": 0}  # fmt: skip
    assert [r["frame"] for r in records] == list(range(12))
    assert [r["pts"] for r in records] == pts
    assert [r["time"] for r in records] == [p / 1000 for p in pts]
    expected = json.loads((tmp_path / "i" / "detections.json").read_text())
    assert sum(len(r["detections"]) for r in records) == len(expected) > 12
    for r in records:
        mine = [{**d, "image_id": d["image_id"] + 1} for d in r["detections"]]
        assert mine == [d for d in expected if d["image_id"] == r["frame"] + 1], r["frame"]

    times, size = _decoded_times(tmp_path / "v" / "videos" / "shapes.mp4")
    assert times == [p / 1000 for p in pts]
    assert size == frames[0].shape[:2]


def test_pipeline_equals_plain_loop_and_predictor(demo_onnx: Path, clip: Any) -> None:
    """The Python API: the threaded pipeline gives, per frame, what the predictor gives on the
    decoded frame, in order, as the plain loop does; --stride keeps every N-th frame."""
    path, frames, _ = clip
    with load_predictor(demo_onnx, threads=1) as predictor:
        with predict_video(predictor, str(path), batch_size=3, stride=2) as run:
            piped = list(run)
        assert set(run.seconds) == {"decode", "preprocess", "infer", "postprocess"}
        with predict_video(predictor, str(path), stride=2, pipeline=False) as run:
            plain = list(run)
        assert [f.index for f, _ in piped] == [f.index for f, _ in plain] == list(range(0, 12, 2))
        for (frame, dets), (_, other) in zip(piped, plain):
            ref = filter_by_score(predictor.predict([frames[frame.index]])[0], 0.5)
            assert to_coco_results(0, filter_by_score(dets, 0.5)) == to_coco_results(0, ref)
            assert len(dets) == len(other)


def test_rotation_metadata_is_honoured(tmp_path: Path) -> None:
    """A video with a 90-degree display rotation: frames come out as players show them, and
    the annotated video is upright at the shown size."""
    frames = moving_shapes(3)
    src = tmp_path / "rot.mp4"
    write_video(str(src), frames, rotation=90)
    with predict_video(PixelPredictor(), str(src)) as run:
        got = [f.image for f, _ in run]
    assert all(np.array_equal(g, np.rot90(f, 1)) for g, f in zip(got, frames))

    from maskrt.runtime.video import open_video
    from maskrt.runtime.videoout import infer_video

    result = infer_video(PixelPredictor(), open_video(str(src)), tmp_path / "o.mp4",
                         tmp_path / "o.jsonl", score_threshold=0.0)  # fmt: skip
    assert result.frames_written == 3
    _, size = _decoded_times(tmp_path / "o.mp4")
    assert size == (frames[0].shape[1], frames[0].shape[0])
    first = _jsonl(tmp_path / "o.jsonl")[1]["detections"][0]
    assert first["segmentation"]["size"] == [frames[0].shape[1], frames[0].shape[0]]


def test_live_source_drops_frames_rather_than_fall_behind(clip: Any) -> None:
    """A live source with a slow predictor: frames are dropped, those kept stay in order."""
    path, frames, _ = clip
    with predict_video(
        PixelPredictor(delay=0.05), str(path), live=True, queue_size=1, batch_size=2
    ) as run:
        got = list(run)
    indices = [f.index for f, _ in got]
    assert indices == sorted(indices) and run.counts["dropped"] > 0
    assert len(got) + run.counts["dropped"] == run.counts["taken"] == 12
    for frame, dets in got:
        assert to_coco_results(0, dets) == to_coco_results(
            0, PixelPredictor.one(frames[frame.index])
        )


def _corrupt(src: Path, dst: Path, start: float, stop: float | None) -> None:
    """``src`` cut at ``start`` of its length (stop None), or with garbage from start to stop."""
    data = bytearray(src.read_bytes())
    a = int(len(data) * start)
    if stop is None:
        dst.write_bytes(bytes(data[:a]))
        return
    b = int(len(data) * stop)
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_damage_before_the_first_frame_leaves_no_video(tmp_path: Path, clip: Any) -> None:
    """Garbage right after the header: no frame, so no video file; the JSON Lines say why."""
    from maskrt.runtime.video import open_video
    from maskrt.runtime.videoout import infer_video

    bad = tmp_path / "bad.mkv"
    _corrupt(clip[0], bad, 0.02, 1.0)
    result = infer_video(PixelPredictor(), open_video(str(bad)), tmp_path / "b.mp4",
                         tmp_path / "b.jsonl")  # fmt: skip
    assert result.status == "damaged" and result.frames_written == 0 and result.video is None
    assert not (tmp_path / "b.mp4").exists() and not list(tmp_path.glob(".*"))
    status = _jsonl(tmp_path / "b.jsonl")[-1]
    assert status["status"] == "damaged" and "at frame 0" in status["error"]


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_damaged_video_keeps_the_frames_before(
    tmp_path: Path, demo_onnx: Path, damage: str
) -> None:
    """A file cut mid-stream, and one whose header is valid but whose later frames are garbage:
    the frames before the damage are processed and written, one line names the frame, exit 1."""
    frames = moving_shapes(30)
    src = tmp_path / "src.mkv"
    write_video(str(src), frames)
    bad = tmp_path / f"{damage}.mkv"
    _corrupt(src, bad, 0.5, None if damage == "cut" else 0.8)
    out = tmp_path / "out"
    done = CliRunner().invoke(
        main, ["infer", str(demo_onnx), str(bad), "-o", str(out), "--no-progress"]
    )
    assert done.exit_code == 1
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "is damaged at frame" in lines[0], done.output
    records = _jsonl(out / "videos" / f"{damage}.jsonl")
    status = records[-1]
    n = status["frames_written"]
    assert status["status"] == "damaged" and f"at frame {n}:" in lines[0]
    assert 5 < n < 30 and [r["frame"] for r in records[1:-1]] == list(range(n))
    times, _ = _decoded_times(out / "videos" / f"{damage}.mp4")
    assert len(times) == n
    # the Python API: the same frames, then VideoDamaged naming the frame
    got = []
    with pytest.raises(VideoDamaged) as raised, predict_video(PixelPredictor(), str(bad)) as run:
        got.extend(frame.index for frame, _ in run)
    assert raised.value.frame_index == n and got == list(range(n))
    # the frames before the damage are the source's own
    with load_predictor(demo_onnx) as predictor:
        ref = filter_by_score(predictor.predict([frames[n - 1]])[0], 0.5)
    assert records[n]["detections"] == to_coco_results(n - 1, ref)


def test_not_a_video_is_one_line_and_writes_nothing(tmp_path: Path, demo_onnx: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    moov_less = tmp_path / "cut.mp4"  # an MP4 cut before its index: nothing to decode
    write_video(str(tmp_path / "whole.mp4"), moving_shapes(4), lossless=False)
    _corrupt(tmp_path / "whole.mp4", moov_less, 0.5, None)
    for source, words in [(text, "cannot open video"), (moov_less, "cannot open video"),
                          (tmp_path / "gone.mkv", "does not exist")]:  # fmt: skip
        out = tmp_path / f"out-{source.stem}"
        done = CliRunner().invoke(main, ["infer", str(demo_onnx), str(source), "-o", str(out)])
        lines = done.output.strip().splitlines()
        assert done.exit_code == 1 and len(lines) == 1 and words in lines[0], done.output
        assert not out.exists()


def test_refuses_to_overwrite_and_needs_the_extra(
    tmp_path: Path, demo_onnx: Path, clip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = clip[0]
    args = ["infer", str(demo_onnx), str(path), "-o", str(tmp_path / "o"), "--no-progress",
            "--stride", "4"]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    assert len(_jsonl(tmp_path / "o" / "videos" / "shapes.jsonl")) == 2 + 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert len(again.output.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(MaskrtError, match=r'needs the video extra: pip install "maskrt\[video\]"'):
        import_av()
    missing = CliRunner().invoke(main, [*args, "--force"])
    assert missing.exit_code == 1
    assert missing.output.strip() == (
        'Error: video input needs the video extra: pip install "maskrt[video]"'
    )


def test_sigterm_finishes_the_files(tmp_path: Path, demo_onnx: Path) -> None:
    """SIGTERM mid-video: a playable video and complete JSON lines up to the last frame done,
    and the status record."""
    src = tmp_path / "long.mkv"
    write_video(str(src), moving_shapes(200), lossless=False)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maskrt.pipeline.main import main; main()", "infer",
         str(demo_onnx), str(src), "-o", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parts = list((out / "videos").glob(".long.jsonl.*")) if (out / "videos").exists() else []
        if parts and parts[0].read_text().count('"frame"') >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    records = _jsonl(out / "videos" / "long.jsonl")
    status = records[-1]
    assert status["status"] == "interrupted" and 3 <= status["frames_written"] < 200
    assert [r["frame"] for r in records[1:-1]] == list(range(status["frames_written"]))
    times, _ = _decoded_times(out / "videos" / "long.mp4")
    assert len(times) == status["frames_written"]
    assert not list((out / "videos").glob(".*"))  # no temporary files left


def _serve(n: int, delay: float) -> tuple[subprocess.Popen[str], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _video_media as m; "
    code += f"m.serve_tcp({port}, {n}, {delay})"
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    return server, f"tcp://127.0.0.1:{port}"


def _open_when_served(url: str) -> Any:
    from maskrt.runtime.video import open_video

    for _ in range(50):  # the server listens a moment after it says so
        try:
            return open_video(url)
        except MaskrtError:
            time.sleep(0.1)
    return open_video(url)


def test_loopback_stream(tmp_path: Path) -> None:
    """A live stream served from this machine: every frame read is written or counted as
    dropped, in order, and the stream's end is a clean end."""
    from maskrt.runtime.videoout import infer_video

    server, url = _serve(30, 0.02)
    try:
        opened = _open_when_served(url)
        assert opened[2].live and opened[2].frames is None
        result = infer_video(PixelPredictor(), opened, tmp_path / "s.mp4", tmp_path / "s.jsonl")
    finally:
        server.kill()
        server.wait()
    assert result.status == "ended" and result.frames_taken == 30
    assert result.frames_written + result.frames_dropped == 30
    records = _jsonl(tmp_path / "s.jsonl")[1:-1]
    indices, pts = [r["frame"] for r in records], [r["pts"] for r in records]
    assert indices == sorted(set(indices)) and pts == sorted(set(pts))
    times, _ = _decoded_times(tmp_path / "s.mp4")
    assert len(times) == result.frames_written


def test_stalled_stream_keeps_what_was_received(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that stops sending: after the timeout, VideoDamaged naming the next frame, the
    frames received before it delivered."""
    from maskrt.runtime import video

    monkeypatch.setattr(video, "STREAM_TIMEOUT", 1.0)
    server, url = _serve(200, 0.04)
    got: list[int] = []
    try:
        opened = _open_when_served(url)
        with pytest.raises(VideoDamaged, match="nothing received for 1 s") as raised:
            with predict_video(PixelPredictor(), url, opened=opened) as run:
                for frame, _ in run:
                    got.append(frame.index)
                    if len(got) == 5:
                        server.send_signal(signal.SIGSTOP)
    finally:
        server.kill()
        server.wait()
    assert got == sorted(set(got)) and len(got) >= 5  # in order (a live source may drop)
    assert raised.value.frame_index == run.counts["taken"] >= len(got)


_RSS_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from _video_media import PixelPredictor
from maskrt.runtime.video import open_video
from maskrt.runtime.videoout import infer_video
out = Path(sys.argv[2])
r = infer_video(PixelPredictor(), open_video(sys.argv[1]), out / "o.mp4", out / "o.jsonl",
                score_threshold=0.0)
assert r.frames_written == int(sys.argv[3]), r
from maskrt.machine import peak_rss_mib  # VmHWM: not the parent's high-water mark
print(peak_rss_mib())
"""


def test_memory_stays_flat_over_a_long_video(tmp_path: Path) -> None:
    """Peak RSS of a whole run (decode, stand-in predictor, overlays, JSON Lines, encoding)
    for 100 and 2000 frames: holding the frames would add ~115 MB (2000 x 160x120x3)."""
    base = moving_shapes(20)
    peaks = {}
    for n in (100, 2000):
        src = tmp_path / f"{n}.mkv"
        frames = [np.ascontiguousarray(base[i % 20][:120, :160]) for i in range(n)]
        write_video(str(src), frames, lossless=False)
        del frames
        out = tmp_path / f"out{n}"
        out.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT.format(tests=str(TESTS)), str(src), str(out),
             str(n)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[n] = float(done.stdout.split()[-1])  # MiB
    assert peaks[2000] - peaks[100] < 20, peaks


def _whole_image_blend(image: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The reference: every mask blended over the whole image in float32, rounded once."""
    from maskrt.runtime.overlay import MASK_ALPHA, label_color

    canvas = image.astype(np.float32)
    for i in reversed(range(len(masks))):
        tint = np.asarray(label_color(int(labels[i])), np.float32)
        canvas[masks[i]] = canvas[masks[i]] * (1 - MASK_ALPHA) + tint * MASK_ALPHA
    return canvas.round().clip(0, 255).astype(np.uint8)


def test_overlay_blends_only_the_masks_windows_as_a_whole_image_blend() -> None:
    """The overlay blends each mask over its own window (a video frame's masks are small): the
    same pixels as blending over the whole image, overlapping, empty and edge masks included."""
    from maskrt.detections import Detections
    from maskrt.runtime.overlay import _blend_masks

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    masks = np.zeros((5, 90, 140), bool)
    masks[0, 10:40, 20:70] = rng.random((30, 50)) > 0.3
    masks[1, 30:60, 50:100] = True  # overlaps mask 0
    masks[2, 80:, 130:] = True  # at the corner
    masks[4, 0:1, 0:140] = True  # one full row; mask 3 stays empty
    labels = np.asarray([1, 2, 3, 1, 2])
    dets = Detections(np.zeros((5, 4), np.float32), np.linspace(0.9, 0.5, 5, dtype=np.float32),
                      labels, masks)  # fmt: skip
    assert np.array_equal(_blend_masks(image, dets), _whole_image_blend(image, masks, labels))
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int),
                      np.zeros((0, 90, 140), bool))  # fmt: skip
    assert np.array_equal(_blend_masks(image, none), image)
