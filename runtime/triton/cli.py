"""``maskrt triton`` and ``maskrt serve``: click verbs over :mod:`maskrt.runtime.triton`."""

from __future__ import annotations

import click

from maskrt.cliargs import force_option, max_batch_option, output_option

from .repository import DETECTORS


@click.command("triton")
@click.argument("artifact", type=click.Path(dir_okay=False))
@output_option("Folder for the Triton model repository.", folder=True)
@max_batch_option(default=8)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances Triton runs side by side.")  # fmt: skip
@click.option("--name", default="maskrt", show_default=True, help="Model name in the repository.")
@click.option("--detector", type=click.Choice(DETECTORS), default="auto", show_default=True,
              help="How the detector runs: tensorrt / onnxruntime = an ensemble around "
              "Triton's own TensorRT / ONNX Runtime backend; python = maskrt's Predictor in "
              "Triton's Python backend (runs on any Triton); auto = tensorrt for an engine, "
              "else python.")  # fmt: skip
@force_option
def triton_command(
    artifact: str, output: str, max_batch: int, instances: int, name: str, detector: str,
    force: bool,
) -> None:  # fmt: skip
    """Write a Triton Inference Server model repository serving ARTIFACT (an .onnx deploy
    graph, an .engine or a checkpoint); its README.md lists the inputs and outputs."""
    from .repository import write_repository

    root = write_repository(
        artifact, output, detector=detector, max_batch=max_batch, instances=instances, name=name,
        force=force,
    )  # fmt: skip
    click.echo(f"Wrote {root} (model {name}); serve it with: maskrt serve {root}")


@click.command("serve")
@click.argument("repository", type=click.Path(file_okay=False))
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")  # fmt: skip
def serve_command(
    repository: str, http_port: int, grpc_port: int, metrics_port: int, address: str
) -> None:
    """Run a local Triton Inference Server on REPOSITORY until Ctrl-C or SIGTERM."""
    from .server import TritonServer

    server = TritonServer(repository, http_port, grpc_port, metrics_port, address)
    with server.stopped_by_sigterm():  # from before the start: no moment that SIGTERM kills us
        server.start()
        click.echo(
            f"Triton ready: http://{address}:{http_port}, grpc {address}:{grpc_port}, metrics "
            f"http://{address}:{metrics_port}/metrics (Ctrl-C stops it)"
        )
        code = server.wait()
    click.echo(f"Triton stopped ({code})")
