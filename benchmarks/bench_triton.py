"""Throughput and latency through a local Triton (the python detector) against the Predictor
called in-process, at concurrency 1, 2, 4 and 8.

    MASKRT_TRITON_HOME=.../pytriton/tritonserver \\
    python benchmarks/bench_triton.py GRAPH.onnx IMAGE_DIR [--requests 64] [--max-batch 8]

Each client sends encoded images one per request (gRPC) and waits for the answer; in-process,
each thread calls ``predictor.predict([image])`` on decoded images (so Triton's side also pays
for decoding, as a real client makes it). Nothing here is a test; figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from maskrt.machine import machine_facts, machine_line
from maskrt.runtime import load_predictor, read_image
from maskrt.runtime.triton import TritonServer, write_repository


def run_clients(call: Callable[[int], None], concurrency: int, requests: int) -> dict[str, float]:
    """``requests`` calls spread over ``concurrency`` threads: latency percentiles and rate."""
    latencies: list[float] = []

    def client(c: int) -> None:
        for k in range(c, requests, concurrency):
            t = time.perf_counter()
            call(k)
            latencies.append((time.perf_counter() - t) * 1e3)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "p50": statistics.median(latencies),
        "p99": float(np.percentile(latencies, 99)),
        "per_s": requests / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--port", type=int, default=18300)
    args = parser.parse_args()
    import tritonclient.grpc as grpcclient

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:16]
    encoded = [np.frombuffer(p.read_bytes(), np.uint8).reshape(1, -1) for p in paths]
    decoded = [read_image(p) for p in paths]
    print(machine_line(machine_facts()))
    print(f"\n{args.graph.name}, {len(paths)} images cycled, {args.requests} requests per row\n")
    print("| concurrency | side | p50 ms | p99 ms | images/s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-triton-") as tmp:
        repo = write_repository(args.graph, Path(tmp) / "repo", max_batch=args.max_batch)
        ports = (args.port, args.port + 1, args.port + 2)
        with TritonServer(repo, *ports) as server, load_predictor(args.graph) as predictor:
            clients = [grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
                       for _ in range(8)]  # fmt: skip

            def triton(k: int) -> None:
                inp = grpcclient.InferInput("image", list(encoded[k % len(paths)].shape), "UINT8")
                inp.set_data_from_numpy(encoded[k % len(paths)])
                clients[k % 8].infer("maskrt", [inp])

            def in_process(k: int) -> None:
                predictor.predict([decoded[k % len(paths)]])

            for call in (triton, in_process):  # warm-up
                run_clients(call, 1, 4)
            for concurrency in (1, 2, 4, 8):
                for name, call in (("Triton (gRPC)", triton), ("Predictor in-process", in_process)):
                    r = run_clients(call, concurrency, args.requests)
                    print(f"| {concurrency} | {name} | {r['p50']:.1f} | {r['p99']:.1f} | "
                          f"{r['per_s']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
