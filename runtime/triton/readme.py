"""The README.md a Triton repository carries: its models, its tensors and how to serve it."""

from __future__ import annotations

from pathlib import Path

from maskrt.specs import ModelSpec

from .facts import DetectorFacts
from .layout import MODEL_FILES, PLATFORMS, plugin_folder
from .tensors import REQUEST_INPUT, RESPONSE, TRITON_TYPES, response_tensors


def tensor_rows(spec: ModelSpec) -> list[str]:
    """The README's table of the request and response tensors (both layouts share them)."""
    rows = [
        "| tensor | type | shape (after the batch dimension) | meaning |",
        "|---|---|---|---|",
        f"| `{REQUEST_INPUT}` (input) | UINT8 | [-1] | the encoded image file (PNG, JPEG, ...) |",
    ]
    for name, dtype, dims in response_tensors(spec):
        meaning = RESPONSE[name].meaning
        shape = "[" + ", ".join(str(d) for d in dims) + "]"
        kind = TRITON_TYPES[dtype].removeprefix("TYPE_")
        rows.append(f"| `{name}` | {kind} | {shape} |" + (f" {meaning} |" if meaning else " |"))
    return rows


def ensemble_readme(
    name: str,
    detector: str,
    facts: DetectorFacts,
    artifact: Path,
    instances: int,
    plugin: Path | None,
) -> str:
    h, w = facts.canvas
    backend_config = ""
    lines = [
        f"# Triton model repository: `{name}` ({facts.spec.name})",
        "",
        f"Written by `maskrt triton --detector {detector}` for `{artifact.name}`: an ensemble.",
        "",
        "| model | runs | what |",
        "|---|---|---|",
        f"| `{name}` | ensemble | what clients call: the three steps below |",
        f"| `{name}_pre` | Python backend | decodes the image, resizes it like torchvision and "
        f"pads it to {h}x{w} |",
        f"| `{name}_detector` | `{PLATFORMS[detector]}` | `{MODEL_FILES[detector]}`, batches of "
        f"up to {facts.max_batch}, {instances} instance(s) |",
        f"| `{name}_post` | Python backend | boxes and keypoints to original pixels, masks "
        "pasted and RLE-encoded |",
        "",
        *tensor_rows(facts.spec),
        "",
        "Run it on a GPU in NVIDIA's Triton container (the Python steps need `pip install maskrt`,",
        "the base install: numpy, pycocotools, pillow):",
        "",
    ]
    if facts.uses_plugins:
        folder = plugin_folder(name)
        from maskrt.plugins import PLUGIN_AUTOREG_LIBRARY

        library = plugin.name if plugin is not None else PLUGIN_AUTOREG_LIBRARY
        where = f"/models/{folder}/{library}"
        if plugin is not None:
            lines.append(f"The engine uses maskrt's RoIAlign plugin: `{folder}/{library}`.")
        else:
            lines.append(
                "The engine uses maskrt's RoIAlign plugin, and this machine has no build of it: "
                "build maskrt with TensorRT (plugins/multilevel_roialign/README.md) and put "
                f"`{library}` in "
                f"`{folder}/`."
            )
        lines.append(
            "It sits beside the detector's config.pbtxt, where Triton looks for no model (every "
            "folder of the repository's root is a model to Triton, and a `plugins/` folder there "
            "stops it at start). TensorRT's backend opens it from `--backend-config`, and it "
            "registers its creators as it opens (it is linked to libnvinfer)."
        )
        lines.append("")
        backend_config = f" --backend-config=tensorrt,plugins={where}"
    lines += [
        "```",
        "docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
        '  -v "$PWD":/models nvcr.io/nvidia/tritonserver:<release>-py3 \\',
        '  bash -c "pip install maskrt && '
        f'tritonserver --model-repository=/models{backend_config}"',
        "```",
        "",
    ]
    if detector == "tensorrt":
        lines += [
            "The engine must come from the same TensorRT release as the container's (its "
            "sidecar names the one it was built with).",
            "",
        ]
    return "\n".join(lines)


def python_readme(
    name: str, spec: ModelSpec, artifact: Path, max_batch: int, instances: int
) -> str:
    lines = [
        f"# Triton model repository: `{name}` ({spec.arch})",
        "",
        f"Written by `maskrt triton` for `{artifact.name}`. Serve it with `maskrt serve .`",
        "(a local Triton) or mount it in NVIDIA's Triton container with maskrt installed in it.",
        "",
        f"`{name}` is a Python-backend model that runs maskrt's Predictor on the artifact in",
        f"`{name}/1/`; dynamic batching on, at most {max_batch} images per execution, "
        f"{instances} instance(s).",
        "",
        *tensor_rows(spec),
    ]
    lines += [
        "",
        "One image per request (batch dimension 1); Triton batches requests. A request that",
        "fails (not an image, too large) gets its own error response, HTTP 400 / gRPC",
        "INVALID_ARGUMENT; the other requests batched with it are answered.",
        "",
    ]
    return "\n".join(lines)
