"""The package's layering, stated on folders and read from the source tree.

Every folder at the top of the repository is one subpackage of ``maskrt`` (folder X ->
``maskrt.X``, as pyproject.toml maps it into the wheel); ``maskrt/`` itself is the foundation.
The folders stand in layers, bottom up::

    maskrt/  <-  plugins/  <-  export/ calibration/ runtime/  <-  pipeline/ training/

A module may import its own folder, the foundation, and the folders ``MAY_IMPORT`` names for its
folder: the real edges between stages (export, calibration and runtime use the plugin;
calibration runs graphs through the runtime), training only the foundation, and the pipeline
everything. Each named edge points to a lower layer, or sideways inside one, and the import graph
has no cycle (imports inside functions count too). A module's edge to one of its own parent
packages is not counted: Python initialises a parent package before its submodules, so that
edge orders nothing (``maskrt.plugins._library`` reads ``maskrt.plugins.__path__``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

FOUNDATION = "maskrt"
# Folders bottom up; a folder may import only from its own layer or below.
LAYERS: tuple[tuple[str, ...], ...] = (
    (FOUNDATION,),
    ("plugins",),
    ("export", "calibration", "runtime"),
    ("pipeline", "training"),
)
# The folders a folder may import besides itself and the foundation.
MAY_IMPORT: dict[str, frozenset[str]] = {
    FOUNDATION: frozenset(),
    "plugins": frozenset(),
    "export": frozenset({"plugins"}),
    "calibration": frozenset({"plugins", "runtime"}),
    "runtime": frozenset({"plugins"}),
    "training": frozenset(),
    "pipeline": frozenset({"plugins", "export", "calibration", "runtime", "training"}),
}


def layer_of(folder: str) -> int:
    return next(i for i, folders in enumerate(LAYERS) if folder in folders)


def rule_problems() -> list[str]:
    """The table above against itself: every folder in one layer, no edge pointing upwards."""
    problems = []
    listed = [f for folders in LAYERS for f in folders]
    if sorted(listed) != sorted(MAY_IMPORT) or len(set(listed)) != len(listed):
        problems.append(f"LAYERS {listed} and MAY_IMPORT {sorted(MAY_IMPORT)} differ")
        return problems
    for folder, targets in MAY_IMPORT.items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(folder):
                problems.append(f"{folder} may import {target}, a higher layer")
    return problems


def wheel_packages(root: Path) -> dict[str, str]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return dict(config["tool"]["scikit-build"]["wheel"]["packages"])


def mapping_problems(packages: Mapping[str, str]) -> list[str]:
    """pyproject's folder mapping follows the rule: folder X is ``maskrt.X``, each one layered."""
    problems = []
    for package, folder in packages.items():
        expected = FOUNDATION if folder == FOUNDATION else f"{FOUNDATION}/{folder}"
        if package != expected:
            problems.append(f"folder {folder}/ maps to {package}, not {expected}")
        if folder not in MAY_IMPORT:
            problems.append(f"folder {folder}/ belongs to no layer (add it to LAYERS)")
    for folder in sorted(set(MAY_IMPORT) - set(packages.values())):
        problems.append(f"layer folder {folder}/ is not in the wheel")
    return problems


def source_modules(root: Path) -> dict[str, tuple[str, Path]]:
    """Module name -> (its folder, its file) for each folder pyproject.toml maps into the wheel."""
    modules: dict[str, tuple[str, Path]] = {}
    for package, folder in wheel_packages(root).items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = [*package.split("/"), *f.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = (folder, f)
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
    return {m: imports_of(m, p, modules) for m, (_, p) in modules.items()}


def folders_of(root: Path) -> dict[str, str]:
    return {m: folder for m, (folder, _) in source_modules(root).items()}


def is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def layer_violations(graph: Mapping[str, set[str]], folders: Mapping[str, str]) -> list[str]:
    """Every import that leaves its folder for one the folder may not import."""
    problems = []
    for module, targets in sorted(graph.items()):
        source = folders[module]
        if source not in MAY_IMPORT:
            problems.append(f"{module} ({source}/) belongs to no layer")
            continue
        for target in sorted(targets):
            if is_ancestor(target, module):
                continue
            folder = folders[target]
            if folder not in (source, FOUNDATION) and folder not in MAY_IMPORT[source]:
                problems.append(f"{module} ({source}/) imports {target} ({folder}/)")
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


def test_the_layer_table_points_downwards() -> None:
    assert rule_problems() == []


def test_pyproject_maps_each_folder_by_the_rule() -> None:
    assert mapping_problems(wheel_packages(ROOT)) == []


def test_no_folder_imports_outside_its_rule() -> None:
    assert layer_violations(import_graph(ROOT), folders_of(ROOT)) == []


def test_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_the_checks_catch_wrong_edges_a_cycle_and_a_wrong_mapping(tmp_path: Path) -> None:
    """The rules above fail on a tree that breaks them (imports inside a function included)."""
    (tmp_path / "pyproject.toml").write_text(
        "[tool.scikit-build.wheel.packages]\n"
        + "".join(f'"maskrt/{f}" = "{f}"\n' for f in ("runtime", "export", "pipeline"))
        + '"maskrt" = "maskrt"\n'
    )
    for folder in ("maskrt", "runtime", "export", "pipeline"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "convert.py").write_text("")
    (tmp_path / "export" / "deploy.py").write_text("")
    (tmp_path / "maskrt" / "errors.py").write_text("def f():\n    from .pipeline import convert\n")
    (tmp_path / "runtime" / "__init__.py").write_text("from . import a\n")
    (tmp_path / "runtime" / "a.py").write_text("def g():\n    from .b import x\n")
    (tmp_path / "runtime" / "b.py").write_text(
        "from maskrt.runtime.a import g\nfrom maskrt.export import deploy\n"
    )
    graph = import_graph(tmp_path)
    assert layer_violations(graph, folders_of(tmp_path)) == [
        "maskrt.errors (maskrt/) imports maskrt.pipeline.convert (pipeline/)",
        "maskrt.runtime.b (runtime/) imports maskrt.export.deploy (export/)",
    ]
    assert cycles(graph) == [["maskrt.runtime.a", "maskrt.runtime.b"]]
    assert mapping_problems(
        {"maskrt": "maskrt", "maskrt/serving": "runtime", "maskrt/extra": "extra"}
    ) == [
        "folder runtime/ maps to maskrt/serving, not maskrt/runtime",
        "folder extra/ belongs to no layer (add it to LAYERS)",
        "layer folder calibration/ is not in the wheel",
        "layer folder export/ is not in the wheel",
        "layer folder pipeline/ is not in the wheel",
        "layer folder plugins/ is not in the wheel",
        "layer folder training/ is not in the wheel",
    ]


def test_the_rule_check_catches_an_upward_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MAY_IMPORT, "plugins", frozenset({"runtime"}))
    assert rule_problems() == ["plugins may import runtime, a higher layer"]
