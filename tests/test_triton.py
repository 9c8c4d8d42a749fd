"""Serving through a real Triton Inference Server (2.51, from the nvidia-pytriton wheel).

The wheel goes in with ``--no-deps`` into a cache folder (it pins numpy < 2 for a Python API
maskrt does not use) and ``MASKRT_TRITON_HOME`` points ``maskrt serve`` at it. On x86_64 Linux
a server that does not start is a failure; elsewhere the wheel does not exist and these skip.

Oracles: ``maskrt infer`` on the same images (HTTP and gRPC answers must be the same records),
the in-process Predictor for the load test, and Triton's own ``ModelConfig`` protobuf
(tritonclient's model_config_pb2) for every config written.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskrt.coco import split_paths, to_coco_results
from maskrt.detections import Detections, match_detections
from maskrt.pipeline.main import main
from maskrt.runtime import filter_by_score, load_predictor, read_image
from maskrt.runtime.triton import TritonServer, write_repository
from maskrt.runtime.triton.configs import model_config
from maskrt.specs import default_spec

PYTRITON = "nvidia-pytriton==0.7.0"
X86_LINUX = sys.platform == "linux" and platform.machine() == "x86_64"
pytestmark = pytest.mark.skipif(not X86_LINUX, reason="no tritonserver wheel for this platform")


@pytest.fixture(scope="session")
def triton_home(request: pytest.FixtureRequest) -> Path:
    """The wheel's tritonserver folder, installed once with --no-deps into pytest's cache."""
    cache = Path(request.config.cache.mkdir("maskrt")) / PYTRITON.replace("==", "-")
    if not (cache / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(tmp), PYTRITON],
            capture_output=True, text=True,
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr[-2000:]
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    return cache / "pytriton" / "tritonserver"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def served(
    triton_home: Path, demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, Path]]:
    """The demo model's ONNX deploy graph served by a local Triton: (server, graph)."""
    from maskrt.checkpoint import load_checkpoint
    from maskrt.export import export_onnx

    root = tmp_path_factory.mktemp("triton")
    graph = root / "model.onnx"
    spec, model = load_checkpoint(demo_checkpoint)
    export_onnx(model, graph, spec=spec, compact_heads=True, progress=False)
    repo = root / "repo"
    written = CliRunner().invoke(main, ["triton", str(graph), "-o", str(repo), "--max-batch", "8"])
    assert written.exit_code == 0, written.output
    assert (repo / "README.md").is_file() and (repo / "maskrt" / "1" / "model.onnx").is_file()
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "maskrt"]
    with _running(triton_home, repo) as server:
        assert "Poll failed" not in server.log_path.read_text(errors="replace")
        yield server, graph


@contextmanager
def _running(triton_home: Path, repo: Path) -> Iterator[TritonServer]:
    """A Triton on ``repo`` on free ports, from the wheel's folder, stopped afterwards."""
    old = os.environ.get("MASKRT_TRITON_HOME")
    os.environ["MASKRT_TRITON_HOME"] = str(triton_home)
    try:
        with TritonServer(repo, *_free_ports(3)) as server:
            yield server
    finally:
        if old is None:
            os.environ.pop("MASKRT_TRITON_HOME", None)
        else:
            os.environ["MASKRT_TRITON_HOME"] = old


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _request(client_module: object, data: bytes) -> list[object]:
    tensor = np.frombuffer(data, np.uint8).reshape(1, -1)
    inp = client_module.InferInput("image", list(tensor.shape), "UINT8")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(tensor)
    return [inp]


# What a client error (Triton's INVALID_ARG) reads as on each protocol
CLIENT_ERROR = {"tritonclient.http": "400", "tritonclient.grpc": "StatusCode.INVALID_ARGUMENT"}


def _refusal(client: object, module: object, model: str, data: bytes) -> tuple[str, str]:
    """(status, message) of the error a request of ``data`` gets; fails if it is answered."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, _request(module, data))  # type: ignore[attr-defined]
    return str(caught.value.status()), str(caught.value.message())


def _detections(result: object) -> Detections:
    """A response -> Detections (masks decoded from the RLE document)."""
    from pycocotools import mask as mask_utils

    get = result.as_numpy  # type: ignore[attr-defined]
    n = int(get("num_detections")[0, 0])
    rles = json.loads(get("masks")[0].tobytes())
    assert len(rles) == n
    masks = [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles]
    return Detections(
        boxes=get("boxes")[0],
        scores=get("scores")[0],
        labels=get("labels")[0].astype(np.int64),
        masks=np.stack(masks).astype(bool) if n else np.zeros((0, 1, 1), bool),
    )


def test_every_config_parses_as_triton_model_config(tmp_path: Path) -> None:
    """config.pbtxt of each model family parses with Triton's ModelConfig and names only the
    outputs the spec has."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for arch, outputs in [
        ("maskrcnn_resnet50_fpn", {"num_detections", "boxes", "scores", "labels", "masks"}),
        ("fasterrcnn_resnet50_fpn", {"num_detections", "boxes", "scores", "labels"}),
        ("keypointrcnn_resnet50_fpn",
         {"num_detections", "boxes", "scores", "labels", "keypoints"}),
    ]:  # fmt: skip
        text = model_config("m", default_spec(arch), "model.onnx", "onnxruntime", 8, 2)
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.max_batch_size == 8 and config.instance_group[0].count == 2
        assert {o.name for o in config.output} == outputs, arch
        assert [i.name for i in config.input] == ["image"] and config.input[0].allow_ragged_batch
        assert config.HasField("dynamic_batching")


def test_request_and_response_tensors_outside_triton(heldout_dataset: Path) -> None:
    """The python detector's tensor conversions, against read_image and maskrt.coco."""
    from maskrt.coco import encode_mask
    from maskrt.errors import MaskrtError
    from maskrt.runtime.triton.python_model import (
        RequestError,
        decode_request,
        encode_response,
        error_status,
    )

    path = sorted(split_paths(heldout_dataset, "val")[0].glob("*.png"))[0]
    data = np.frombuffer(path.read_bytes(), np.uint8).reshape(1, -1)
    np.testing.assert_array_equal(decode_request(data), read_image(path))
    for bad, message in [
        (data.repeat(2, axis=0), "one image per request"),
        (data.astype(np.float32), "must be UINT8"),
        (data[:, :0], "no bytes"),
        (data[:, : data.shape[1] // 2], "cannot read"),
    ]:
        with pytest.raises(RequestError, match=message) as caught:
            decode_request(bad)
        assert error_status(caught.value) == ("INVALID_ARG", str(caught.value))
    # failures that are not the client's stay server errors
    assert error_status(MaskrtError("no spec")) == ("INTERNAL", "no spec")
    assert error_status(KeyError("boxes")) == ("INTERNAL", "KeyError: 'boxes'")
    masks = np.zeros((2, 5, 6), bool)
    masks[0, 1:3, 2:4] = True
    dets = Detections(np.ones((2, 4), np.float32), np.asarray([0.9, 0.4], np.float32),
                      np.asarray([1, 2]), masks)  # fmt: skip
    out = encode_response(dets, with_masks=True)
    assert out["num_detections"].tolist() == [[2]] and out["boxes"].shape == (1, 2, 4)
    assert out["labels"].dtype == np.int32 and out["scores"].shape == (1, 2)
    assert json.loads(out["masks"][0].tobytes()) == [encode_mask(m) for m in masks]
    empty = encode_response(Detections.empty(5, 6, with_masks=True), with_masks=True)
    assert empty["boxes"].shape == (1, 0, 4) and json.loads(empty["masks"][0].tobytes()) == []


def test_http_and_grpc_answer_as_maskrt_infer(
    served: tuple[TritonServer, Path], heldout_dataset: Path, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server, graph = served
    image_dir, _ = split_paths(heldout_dataset, "val")
    # and one without detections: empty response tensors cross the stub too
    paths = [*sorted(image_dir.glob("*.png"))[:4], _nothing_detected(graph, tmp_path)]
    out = tmp_path / "infer"
    r = CliRunner().invoke(
        main, ["infer", str(graph), *map(str, paths), "-o", str(out), "--score-threshold", "0",
               "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    expected = json.loads((out / "detections.json").read_text())
    images_json = json.loads((out / "images.json").read_text())
    ids = {Path(rec["file_name"]).name: rec["id"] for rec in images_json}
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        got = []
        for p in paths:
            result = client.infer("maskrt", _request(module, p.read_bytes()))
            got += to_coco_results(ids[p.name], _detections(result))
        assert got == expected, module.__name__
    assert any(rec["score"] >= 0.5 for rec in expected), "the model detects nothing"


def _nothing_detected(graph: Path, folder: Path) -> Path:
    """A PNG on which ``graph`` detects nothing (in-process): a uniform image, the first grey
    level of several that gives no detection, so that responses without detections are served."""
    with load_predictor(graph) as predictor:
        for level in range(0, 256, 8):
            image = np.full((96, 128, 3), level, np.uint8)
            if not len(predictor.predict([image])[0]):
                path = folder / f"uniform-{level}.png"
                Image.fromarray(image).save(path)
                return path
    raise AssertionError("the model detects something on every uniform image")


def _agreement(a: Detections, b: Detections) -> float:
    """How alike two detection sets are: 2 x matched pairs (validate's matcher) / both counts,
    over detections scoring >= 0.3 (1.0 when both have none)."""
    a, b = filter_by_score(a, 0.3), filter_by_score(b, 0.3)
    if not len(a) and not len(b):
        return 1.0
    return 2 * len(match_detections(a, b)) / (len(a) + len(b))


def test_concurrent_clients_are_batched_and_get_their_own_answers(
    served: tuple[TritonServer, Path], heldout_dataset: Path
) -> None:
    """8 clients x 50 requests of mixed image sizes: every answer is its own image's (it agrees
    with that image's in-process result clearly better than with any other's), nothing is lost,
    and Triton batched them (fewer executions than inferences). A batch pads its images to the
    largest, which moves a low-score detection now and then: hence agreement, not equality."""
    import tritonclient.grpc as grpcclient

    server, graph = served
    image_dir, _ = split_paths(heldout_dataset, "val")
    images = [read_image(p) for p in sorted(image_dir.glob("*.png"))[:8]]
    images = [im if i % 2 else np.asarray(Image.fromarray(im).resize((im.shape[1] + 37,
              im.shape[0] + 21))) for i, im in enumerate(images)]  # fmt: skip
    with load_predictor(graph) as predictor:
        expected = [predictor.predict([im])[0] for im in images]
    for i in range(len(images)):  # the images are told apart by their detections
        assert max(_agreement(expected[i], expected[j]) for j in range(8) if j != i) < 0.5
    encoded = [_png(im) for im in images]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    before = client.get_inference_statistics("maskrt", as_json=True)["model_stats"][0]

    def client_run(c: int) -> list[tuple[int, float, float]]:
        own = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        answers = []
        for k in range(50):
            i = (c * 3 + k) % len(images)
            got = _detections(own.infer("maskrt", _request(grpcclient, encoded[i])))
            others = max(_agreement(got, expected[j]) for j in range(8) if j != i)
            answers.append((i, _agreement(got, expected[i]), others))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for run in pool.map(client_run, range(8)) for a in run]
    assert len(answers) == 400
    # measured: own 0.67-1.0 where the batch moved a detection, every other image <= 0.25
    wrong = [(i, own, other) for i, own, other in answers if own < 0.5 or own - other < 0.25]
    assert not wrong, wrong[:5]
    after = client.get_inference_statistics("maskrt", as_json=True)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 400 and executions < inferences, (inferences, executions)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's front page)."""
    data = _png(np.zeros((2, 2, 3), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + \
        data[33:]  # fmt: skip


def test_bad_requests_fail_alone_and_the_server_keeps_serving(
    served: tuple[TritonServer, Path], heldout_dataset: Path
) -> None:
    """Requests that are the client's fault get a client error (HTTP 400, gRPC INVALID_ARGUMENT,
    not INTERNAL) of their own, with the reason; the good requests batched with them are
    answered."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server, _ = served
    image_dir, _ = split_paths(heldout_dataset, "val")
    good = sorted(image_dir.glob("*.png"))[0].read_bytes()
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("RGB").save(jpeg, format="JPEG")
    sliver = io.BytesIO()  # 1 x 2000 px: the model's resize gives it no height
    Image.new("RGB", (2000, 1)).save(sliver, format="PNG")
    bad = {
        "not an image": (b"hello, triton", "cannot read"),
        "no bytes": (b"", "no bytes"),
        "too large": (_png_claiming(20000, 20000), "megapixels"),
        "truncated JPEG": (jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "cannot read"),
        "too elongated": (sliver.getvalue(), "elongated"),
    }
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

    def send(data: bytes) -> tuple[str, str]:
        own = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            own.infer("maskrt", _request(grpcclient, data))
            return "ok", ""
        except InferenceServerException as e:
            return str(e.status()), str(e.message())

    # the bad ones in the middle of good ones, sent together so that they share batches
    batch = [good] * 3 + [data for data, _ in bad.values()] + [good] * 3
    with ThreadPoolExecutor(len(batch)) as pool:
        answers = list(pool.map(send, batch))
    assert answers[:3] == [("ok", "")] * 3 and answers[-3:] == [("ok", "")] * 3
    for (what, (_, reason)), (status, message) in zip(bad.items(), answers[3:-3]):
        assert status == CLIENT_ERROR["tritonclient.grpc"] and reason in message, (what, status)
    # and over HTTP: 400, not 500
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for what, (data, reason) in bad.items():
        status, message = _refusal(http, httpclient, "maskrt", data)
        assert status == CLIENT_ERROR["tritonclient.http"] and reason in message, (what, status)
    # wrong dtype and wrong shape are refused by Triton or by the model, one request each
    wrong_type = grpcclient.InferInput("image", [1, 1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("maskrt", [wrong_type])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    two = np.frombuffer(good, np.uint8).reshape(1, -1).repeat(2, axis=0)  # 2 images, 1 request
    wrong_shape = grpcclient.InferInput("image", list(two.shape), "UINT8")
    wrong_shape.set_data_from_numpy(two)
    with pytest.raises(InferenceServerException, match="one image per request") as caught:
        client.infer("maskrt", [wrong_shape])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert send(good) == ("ok", "") and server.ready()  # still serving


def _maskrt_serve(
    triton_home: Path, graph: Path, tmp_path: Path
) -> tuple[subprocess.Popen[str], int]:
    """`maskrt serve` on a python-detector repository of ``graph``, in its own process (stdout
    piped); the process and its HTTP port."""
    repo = write_repository(graph, tmp_path / "repo", max_batch=2)
    http, grpc, metrics = _free_ports(3)
    env = dict(os.environ, MASKRT_TRITON_HOME=str(triton_home))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from maskrt.pipeline.main import main; main()", "serve",
         str(repo), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port",
         str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    return proc, http


def test_serve_runs_until_sigterm_and_stops_cleanly(
    triton_home: Path, tmp_path: Path, served: tuple[TritonServer, Path]
) -> None:
    """`maskrt serve` waits until the models are ready, says so, and exits 0 on SIGTERM."""
    import signal
    import time
    import urllib.request

    proc, http = _maskrt_serve(triton_home, served[1], tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server is ready
        assert line.startswith("Triton ready"), line
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - start < 30
        assert "Triton stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _tritonservers_on(port: int) -> list[int]:
    """PIDs of tritonserver processes started with ``--http-port=port``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"tritonserver") and f"--http-port={port}".encode() in cmd:
            pids.append(int(proc.name))
    return pids


def test_serve_stopped_while_starting_leaves_no_server(
    triton_home: Path, tmp_path: Path, served: tuple[TritonServer, Path]
) -> None:
    """SIGTERM while the server is still loading its models: `maskrt serve` stops it (the server
    runs in its own session, so killing `maskrt serve` alone would leave it running) and says so
    in one line."""
    import signal
    import time

    proc, http = _maskrt_serve(triton_home, served[1], tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _tritonservers_on(http) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _tritonservers_on(http), "tritonserver never started"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        out = proc.stdout.read() if proc.stdout else ""
        # stopped while starting (the usual case), or just after it became ready
        starting = out.strip() == "Error: tritonserver was stopped before it was ready"
        assert (code == 1 and starting) or (code == 0 and "Triton stopped" in out), (code, out)
        deadline = time.monotonic() + 30
        while _tritonservers_on(http) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _tritonservers_on(http), "tritonserver left running"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _tritonservers_on(http):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ ensembles


def _stand_in_engine(
    tmp_path: Path, graph: Path, uses_plugins: bool, plan: bytes = b"stand-in for a plan"
) -> Path:
    """A file standing in for a TensorRT engine of ``graph`` (no TensorRT here), holding ``plan``,
    with the sidecar `maskrt build` would write: the ensemble reads only the sidecar, the plan
    goes to Triton."""
    from maskrt import contract
    from maskrt.onnxio import read_spec
    from maskrt.runtime.profiles import default_profile
    from maskrt.runtime.sidecar import MachineFacts, Sidecar, write_sidecar

    spec = read_spec(graph)
    dims = {contract.INPUT_IMAGES: ("B", 3, "H", "W"), contract.INPUT_IMAGE_SIZES: ("B", 2)}
    engine = tmp_path / "model.engine"
    engine.write_bytes(plan)
    write_sidecar(
        engine,
        Sidecar(
            machine=MachineFacts("10.13.0.35", "NVIDIA H100", (9, 0), None),
            onnx_sha256="0" * 64,
            engine_sha256="1" * 64,
            precision="fp16",
            profiles=(default_profile(dims, spec, max_batch=4),),
            spec=spec,
            uses_plugins=uses_plugins,
            io=contract.io_specs(spec.box_detections_per_img, True, False),
        ),
    )
    return engine


def test_ensemble_configs_parse_and_match_their_artifacts(
    served: tuple[TritonServer, Path], tmp_path: Path
) -> None:
    """The tensorrt_plan and onnxruntime_onnx ensembles (which this Triton cannot load: it has
    no GPU backends) parse with Triton's ModelConfig, chain their steps by tensors the steps
    declare, and declare exactly the artifact's inputs and outputs; what is not servable is
    refused before anything is written."""
    import onnx

    from maskrt.errors import MaskrtError
    from maskrt.plugins.surgery import surgery_file
    from maskrt.runtime.triton.check import check_repository, parse_config

    _, graph = served
    onnx_repo = write_repository(graph, tmp_path / "ort", detector="onnxruntime", max_batch=4)
    engine = _stand_in_engine(tmp_path, graph, uses_plugins=True)
    trt_repo = write_repository(engine, tmp_path / "trt")  # auto: an engine's ensemble
    for repo, platform_name, model_file in (
        (onnx_repo, "onnxruntime_onnx", "model.onnx"),
        (trt_repo, "tensorrt_plan", "model.plan"),
    ):
        assert check_repository(repo) == []
        configs = {p.parent.name: parse_config(p) for p in repo.glob("*/config.pbtxt")}
        assert sorted(configs) == ["maskrt", "maskrt_detector", "maskrt_post", "maskrt_pre"]
        ensemble, detector = configs["maskrt"], configs["maskrt_detector"]
        assert ensemble.platform == "ensemble" and detector.platform == platform_name
        steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
        assert steps == ["maskrt_pre", "maskrt_detector", "maskrt_post"]
        assert {o.name for o in ensemble.output} == {o.name for o in configs["maskrt_post"].output}
        assert (repo / "maskrt_detector" / "1" / model_file).is_file()
        assert (repo / "maskrt" / "1").is_dir() and (repo / "README.md").is_file()
    model = onnx.load(str(graph), load_external_data=False)
    detector = parse_config(onnx_repo / "maskrt_detector" / "config.pbtxt")
    assert [i.name for i in detector.input] == [i.name for i in model.graph.input]
    assert [o.name for o in detector.output] == [o.name for o in model.graph.output]
    pre = parse_config(onnx_repo / "maskrt_pre" / "config.pbtxt")
    spec = default_spec("demo_maskrcnn")
    assert list(pre.output[0].dims) == [3, 224, 224] == [3, spec.max_size, spec.max_size]
    readme = (trt_repo / "README.md").read_text()  # this build has no plugin library
    assert "plugins=/models/maskrt_detector/libmaskrt_roialign_trt_autoreg.so" in readme
    assert "put `libmaskrt_roialign_trt_autoreg.so` in `maskrt_detector/`" in readme

    # the checker is not a rubber stamp: a renamed output and a dangling step are reported
    text = (onnx_repo / "maskrt_detector" / "config.pbtxt").read_text()
    (onnx_repo / "maskrt_detector" / "config.pbtxt").write_text(text.replace('"scores"', '"s"'))
    problems = check_repository(onnx_repo)
    assert any("'s' is not in model.onnx" in p for p in problems), problems
    assert any("has no output 'scores'" in p for p in problems), problems

    surgered = tmp_path / "surgered.onnx"
    surgery_file(graph, surgered)
    for artifact, detector_name, message in (
        (surgered, "onnxruntime", "plugin nodes"),
        (graph, "tensorrt", "serves a .engine file"),
    ):
        with pytest.raises(MaskrtError, match=message):
            write_repository(artifact, tmp_path / "refused", detector=detector_name)
        assert not (tmp_path / "refused").exists()


_STAND_IN_DETECTOR = '''
"""Test stand-in for Triton's onnxruntime backend (absent from this Triton build): the same
graph run by ONNX Runtime inside the Python backend, same inputs and outputs."""
import json
import os
import site
import sys

for _folder in reversed(os.environ.get("MASKRT_SITE_DIRS", "").split(os.pathsep)):
    if _folder:
        site.addsitedir(_folder)
        sys.path.remove(_folder)
        sys.path.insert(0, _folder)

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        # the graph itself, or a stand-in plan that holds the graph's bytes
        found = [n for n in ("model.onnx", "model.plan") if os.path.isfile(os.path.join(folder, n))]
        self.session = ort.InferenceSession(
            os.path.join(folder, found[0]), providers=["CPUExecutionProvider"]
        )
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        def stacked(name):
            return np.concatenate(
                [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, name)) for r in requests]
            )

        feeds = {"images": stacked("images"), "image_sizes": stacked("image_sizes")}
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(None, feeds)))
        out["num_detections"] = out["num_detections"].reshape(-1, 1)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack(n, np.array(out[n][i : i + 1])) for n in self.outputs]
            )
            for i in range(len(requests))
        ]
'''


@pytest.fixture(scope="module")
def served_ensemble(
    triton_home: Path, served: tuple[TritonServer, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonServer, Path]]:
    """The onnxruntime ensemble of the demo graph on a real Triton, its detector step run by a
    Python-backend stand-in with the same inputs and outputs (this Triton has no onnxruntime
    backend): the pre/post steps and the ensemble's wiring and batching are Triton's own."""
    _, graph = served
    repo = write_repository(graph, tmp_path_factory.mktemp("ens") / "repo", detector="onnxruntime")
    _stand_in_detector(repo / "maskrt_detector")
    with _running(triton_home, repo) as server:
        yield server, graph


def _stand_in_detector(folder: Path) -> None:
    """Turn the detector step in ``folder`` (tensorrt_plan or onnxruntime_onnx) into the Python
    stand-in, in place: its config names the Python backend and the CPU, and model.py goes
    beside the artifact; every other file stays as written."""
    config = folder / "config.pbtxt"
    text = config.read_text()
    for platform_name, model_file in (
        ("onnxruntime_onnx", "model.onnx"),
        ("tensorrt_plan", "model.plan"),
    ):
        text = text.replace(f'platform: "{platform_name}"', 'backend: "python"')
        text = text.replace(f'default_model_filename: "{model_file}"\n', "")
    text = text.replace(" reshape: { shape: [ ] }", "")
    config.write_text(text.replace("KIND_AUTO", "KIND_CPU").replace("KIND_GPU", "KIND_CPU"))
    (folder / "1" / "model.py").write_text(_STAND_IN_DETECTOR)


def _on_canvas(graph: Path, paths: list[Path]) -> list[Detections]:
    """The in-process Predictor's answers on ``graph``, padding every image to the ensemble's
    canvas (224x224)."""
    with load_predictor(graph) as predictor:
        predictor.runner.fixed_size = (224, 224)  # type: ignore[attr-defined]
        return [predictor.predict([read_image(p)])[0] for p in paths]


def test_ensemble_answers_as_the_predictor_batches_and_refuses_bad_requests(
    served_ensemble: tuple[TritonServer, Path], heldout_dataset: Path, tmp_path: Path
) -> None:
    """HTTP and gRPC answers of the ensemble equal the in-process Predictor's on the same graph
    padding to the same canvas (224x224: the ensemble pads every image to it so that requests
    batch), and 4 clients x 12 requests were batched at the detector step, each answer its own
    image's."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server, graph = served_ensemble
    image_dir, _ = split_paths(heldout_dataset, "val")
    paths = [*sorted(image_dir.glob("*.png"))[:6], _nothing_detected(graph, tmp_path)]
    expected = _on_canvas(graph, paths)
    assert any(len(filter_by_score(e, 0.5)) for e in expected), "the model detects nothing"
    assert not len(expected[-1]), "the uniform image has detections on the canvas"
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        for p, want in zip(paths, expected):
            got = _detections(client.infer("maskrt", _request(module, p.read_bytes())))
            assert to_coco_results(1, got) == to_coco_results(1, want), (module.__name__, p.name)

    encoded = [p.read_bytes() for p in paths]
    before = grpc.get_inference_statistics("maskrt_detector", as_json=True)["model_stats"][0]

    def client_run(c: int) -> int:
        own = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        agree = 0
        for k in range(12):
            i = (c + k) % len(paths)
            got = _detections(own.infer("maskrt", _request(grpcclient, encoded[i])))
            agree += _agreement(got, expected[i]) == 1.0
        return agree

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(client_run, range(4))) == 48
    after = grpc.get_inference_statistics("maskrt_detector", as_json=True)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 48 and executions < inferences, (inferences, executions)

    for module, client in ((httpclient, http), (grpcclient, grpc)):  # a client error, not 500
        status, message = _refusal(client, module, "maskrt", b"hello, triton")
        assert status == CLIENT_ERROR[module.__name__] and "cannot read" in message, status
    got = _detections(grpc.infer("maskrt", _request(grpcclient, encoded[0])))
    assert to_coco_results(1, got) == to_coco_results(1, expected[0])  # still serving


def test_tensorrt_layout_with_its_plugin_library_starts_and_answers(
    triton_home: Path,
    served: tuple[TritonServer, Path],
    heldout_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `maskrt triton model.engine` writes for an engine that uses maskrt's plugin, on the
    real server: every folder and file as written (plan, sidecar, plugin library, configs,
    README), with a stand-in library where the plugin goes (no TensorRT build here) and the
    detector step run by the Python stand-in on the graph the plan stands for (this Triton has
    no TensorRT backend). The server starts with no "Poll failed", answers like the Predictor
    and refuses a bad image as a client error; the library sits where the repository's README
    command names it. The earlier layout (the library in a root `plugins/` folder) stops the same
    server at start: the check can fail."""
    import re

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    import maskrt.plugins
    from maskrt.errors import MaskrtError

    _, graph = served
    library = tmp_path / "build" / "libmaskrt_roialign_trt_autoreg.so"
    library.parent.mkdir()
    library.write_bytes(b"stand-in for maskrt's TensorRT plugin library")
    monkeypatch.setattr(maskrt.plugins, "plugin_autoreg_library_path", lambda: library)
    engine = _stand_in_engine(tmp_path, graph, uses_plugins=True, plan=graph.read_bytes())
    repo = tmp_path / "repo"
    r = CliRunner().invoke(main, ["triton", str(engine), "-o", str(repo)])
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "README.md",
        "maskrt", "maskrt/1", "maskrt/config.pbtxt",
        "maskrt_detector", "maskrt_detector/1", "maskrt_detector/1/model.plan",
        "maskrt_detector/1/model.plan.json", "maskrt_detector/config.pbtxt",
        "maskrt_detector/libmaskrt_roialign_trt_autoreg.so",
        "maskrt_post", "maskrt_post/1", "maskrt_post/1/maskrt_spec.json",
        "maskrt_post/1/model.py", "maskrt_post/config.pbtxt",
        "maskrt_pre", "maskrt_pre/1", "maskrt_pre/1/maskrt_spec.json", "maskrt_pre/1/model.py",
        "maskrt_pre/config.pbtxt",
    ]  # fmt: skip
    # the README's server command names the library where the container mounts the repository
    (command,) = re.findall(
        r"tritonserver --model-repository=/models (\S+)\"", (repo / "README.md").read_text()
    )
    want = "/models/maskrt_detector/libmaskrt_roialign_trt_autoreg.so"
    assert command == f"--backend-config=tensorrt,plugins={want}"
    named = repo / command.split("=/models/")[1]
    assert named.read_bytes() == library.read_bytes()

    _stand_in_detector(repo / "maskrt_detector")
    image_dir, _ = split_paths(heldout_dataset, "val")
    paths = sorted(image_dir.glob("*.png"))[:2]
    expected = _on_canvas(graph, paths)
    with _running(triton_home, repo) as server:
        log = server.log_path.read_text(errors="replace")
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        for module, client in ((httpclient, http), (grpcclient, grpc)):
            for p, want in zip(paths, expected):
                got = _detections(client.infer("maskrt", _request(module, p.read_bytes())))
                assert to_coco_results(1, got) == to_coco_results(1, want), module.__name__
            status, message = _refusal(client, module, "maskrt", b"hello, triton")
            assert status == CLIENT_ERROR[module.__name__] and "cannot read" in message
    assert "Poll failed" not in log and "successfully loaded 'maskrt_detector'" in log

    (repo / "plugins").mkdir()  # the layout before issue 29
    (repo / "maskrt_detector" / library.name).rename(repo / "plugins" / library.name)
    with pytest.raises(MaskrtError, match="Poll failed for model directory 'plugins'"):
        with _running(triton_home, repo):
            pass
    # `maskrt triton --force` over that repository writes today's layout, and the server starts
    r = CliRunner().invoke(main, ["triton", str(engine), "-o", str(repo), "--force"])
    assert r.exit_code == 0, r.output
    assert not (repo / "plugins").exists() and named.read_bytes() == library.read_bytes()
    _stand_in_detector(repo / "maskrt_detector")
    with _running(triton_home, repo) as server:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        got = _detections(grpc.infer("maskrt", _request(grpcclient, paths[0].read_bytes())))
        assert to_coco_results(1, got) == to_coco_results(1, expected[0])
