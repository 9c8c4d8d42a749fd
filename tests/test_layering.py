"""The package's layering, read from the source tree (imports inside functions count too).

Layers, bottom up: the foundation (``maskrt.contract``, ``specs``, ``onnxio`` ... : what every
stage imports), the stages (``maskrt.export``, ``calibration``, ``plugins``, ``runtime``) and
``maskrt.training``, then ``maskrt.pipeline`` with the command line on top. Rules:

* the foundation imports no stage, no training and no pipeline module;
* a stage never imports the pipeline or training; training imports only the foundation;
* the import graph has no cycle. A module's edge to one of its own parent packages is not
  counted: Python initialises a parent package before its submodules, so that edge orders
  nothing (``maskrt.plugins._library`` reads ``maskrt.plugins.__path__``).

The folder -> package mapping comes from pyproject.toml, as the wheel is built.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

FOUNDATION = {
    "maskrt",
    "maskrt.checkpoint",
    "maskrt.cliargs",
    "maskrt.coco",
    "maskrt.contract",
    "maskrt.detections",
    "maskrt.errors",
    "maskrt.fileio",
    "maskrt.introspect",
    "maskrt.machine",
    "maskrt.onnxio",
    "maskrt.specs",
}
STAGES = ("maskrt.export", "maskrt.calibration", "maskrt.plugins", "maskrt.runtime")


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    for prefix, name in [
        *((s, "stage") for s in STAGES),
        ("maskrt.training", "training"),
        ("maskrt.pipeline", "pipeline"),
    ]:
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "unknown"


ALLOWED = {
    "foundation": {"foundation"},
    "stage": {"foundation", "stage"},
    "training": {"foundation", "training"},
    "pipeline": {"foundation", "stage", "training", "pipeline"},
}


def source_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every package folder pyproject.toml maps into the wheel."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    packages: Mapping[str, str] = config["tool"]["scikit-build"]["wheel"]["packages"]
    modules: dict[str, Path] = {}
    for package, folder in packages.items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = [*package.split("/"), *f.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = f
    return modules


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The maskrt modules ``module`` imports anywhere in its file, resolved to known modules."""
    known = set(known)
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [resolve(a.name) for a in node.names if a.name.startswith("maskrt")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("maskrt"):
                continue
            targets = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in known else resolve(source)
                for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t and t != module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = source_modules(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        if layer(module) == "unknown":
            problems.append(f"{module} belongs to no layer (add it to tests/test_layering.py)")
            continue
        for target in sorted(targets):
            if is_ancestor(target, module):
                continue
            if layer(target) not in ALLOWED[layer(module)]:
                problems.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ancestor edges left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph or is_ancestor(w, v):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_foundation_and_stages_never_import_upwards() -> None:
    assert layer_violations(import_graph(ROOT)) == []


def test_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_the_checks_catch_a_violation_and_a_cycle(tmp_path: Path) -> None:
    """The rules above fail on a tree that breaks them (imports inside a function included)."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.scikit-build.wheel.packages]\n"maskrt" = "maskrt"\n"maskrt/runtime" = "runtime"\n'
    )
    (tmp_path / "maskrt" / "pipeline").mkdir(parents=True)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "maskrt" / "__init__.py").write_text("")
    (tmp_path / "maskrt" / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "maskrt" / "pipeline" / "convert.py").write_text("")
    (tmp_path / "maskrt" / "errors.py").write_text("def f():\n    from .pipeline import convert\n")
    (tmp_path / "runtime" / "__init__.py").write_text("from . import a\n")
    (tmp_path / "runtime" / "a.py").write_text("def g():\n    from .b import x\n")
    (tmp_path / "runtime" / "b.py").write_text("from maskrt.runtime.a import g\n")
    graph = import_graph(tmp_path)
    assert layer_violations(graph) == [
        "maskrt.errors (foundation) imports maskrt.pipeline.convert (pipeline)"
    ]
    assert cycles(graph) == [["maskrt.runtime.a", "maskrt.runtime.b"]]
