"""Imports inside deq/ and baselines/ run one way: no cycle, and every edge points down the layers.

The graph is read from the source with ``ast``; nothing is imported. An import inside a function
counts like one at the top of the file: deferring an import is the usual way a cycle is hidden from
the interpreter, and the dependency is there all the same. Not seen: modules named by a string at
run time (``importlib.import_module``; ``deq.bench.__main__`` picks a benchmark that way, inside
``deq.bench``).
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deq", "baselines")

# The layers, bottom first. A module may import modules of its own layer and of the layers below it,
# never of a layer above: the solver library knows nothing about models, a cell nothing about the
# drivers that run it explicitly, a baseline nothing about the table rows that use it. Each pattern
# names a module (fnmatch, matched against the dotted name: "deq" is the package's __init__ alone,
# "deq.data.*" everything under deq.data); every module must match exactly one layer, so a new
# module is placed here on purpose, not by default.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Stdlib-only helpers and facts that any layer may use: atomic writes and file locks, a package's
    # lazily imported names, the presets' budgets.
    ("foundation", ("deq.io", "deq.lazy", "deq.presets", "deq.provenance")),
    # Corpora and the copy-memory task: downloads, tokens, batches. Tensors only, no models.
    ("data", ("deq.data", "deq.data.*")),
    # The solver library: solve z = f(z) and differentiate through the solution, given only f and a
    # starting point. The package's __init__ is its public face.
    ("solver library", ("deq", "deq.settings", "deq.solvers", "deq.solvers.*", "deq.backward", "deq.layer")),
    # One cell per architecture (and its settings), the DEQ driver that solves it, and the language model
    # around a driver.
    ("cells and drivers", ("deq.models", "deq.models.layers", "deq.models.cell", "deq.models.cell_configs",
                           "deq.models.transformer", "deq.models.trellis", "deq.models.drivers",
                           "deq.models.adaptive", "deq.models.lm", "deq.models.copy_memory")),
    # Explicit drivers of the same cells (weight-tied, untied) and the copy-memory baselines.
    ("baselines", ("baselines", "baselines.*")),
    # The paper's table rows: their type, their data, the registry that serves them at a preset, the
    # builder that turns each into a model with the row's driver (DEQ or baseline), and their counts.
    ("row registry", ("deq.rows", "deq.rows.*")),
    # What runs the rows: run configs and records, training, evaluation, the study, benchmarks, reports.
    ("engine, benchmarks, workflow", ("deq.engine", "deq.engine.*", "deq.train", "deq.evaluate", "deq.lean",
                                      "deq.study", "deq.bench", "deq.bench.*", "deq.report", "deq.report.*")),
]
SOLVER_LIBRARY = "solver library"


class Edge(NamedTuple):
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    where: str  # 'path/to/file.py:line', and ' (in a function)' for a deferred import


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__.py)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``deq.x.attr`` -> ``deq.x``), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              modules: dict[str, Path]) -> set[str]:
    """The project modules one import statement depends on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: level 1 is the module's own package
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg (its __init__).
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return {target for name in names if (target := _nearest_module(name, modules)) and target != module}


def import_edges(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Edge]:
    """Every import between the packages' modules, top-level and inside functions alike."""
    modules = find_modules(root, packages)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deferred = {id(node) for function in ast.walk(tree)
                    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                where = f"{path.relative_to(root)}:{node.lineno}" + (" (in a function)" if id(node) in deferred else "")
                edges += [Edge(module, target, where)
                          for target in sorted(_imported(node, module, path.name == "__init__.py", modules))]
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layers_of(module: str) -> list[int]:
    """The ranks (indices into LAYERS) whose patterns match ``module``; exactly one when it is placed."""
    return [rank for rank, (_, patterns) in enumerate(LAYERS) if any(fnmatchcase(module, p) for p in patterns)]


def ranks() -> dict[str, int]:
    """Module -> its layer's rank, for every module; fails naming any module in no layer or in several."""
    placed = {module: layers_of(module) for module in find_modules(ROOT, PACKAGES)}
    misplaced = {m: [LAYERS[r][0] for r in found] for m, found in placed.items() if len(found) != 1}
    assert not misplaced, f"modules in no layer or in several (place each in LAYERS): {misplaced}"
    return {module: found[0] for module, found in placed.items()}


def test_the_parser_sees_deferred_relative_and_submodule_imports(tmp_path):
    # The checks below are only as good as the graph: a function-level import, a relative import and
    # `from package import submodule` must each show up as the edge the interpreter would follow.
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "VALUE = 1\n",
        "pkg/a.py": "from . import b\nfrom .sub import c\n",
        "pkg/b.py": "def f():\n    from pkg import VALUE\n    import pkg.sub.c as c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..b import f\nimport os\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    edges = import_edges(tmp_path, ("pkg",))
    assert {(e.source, e.target) for e in edges} == {
        ("pkg.a", "pkg.b"), ("pkg.a", "pkg.sub.c"), ("pkg.b", "pkg"), ("pkg.b", "pkg.sub.c"), ("pkg.sub.c", "pkg.b")}
    assert cycles(edges) == [["pkg.b", "pkg.sub.c"]]
    assert all(e.where.endswith("(in a function)") == (e.source == "pkg.b") for e in edges)


def test_every_module_is_in_exactly_one_layer():
    # A module outside every layer would escape the order check below; one in two layers has no rank.
    assert set(ranks()) == set(find_modules(ROOT, PACKAGES))


def test_no_import_cycle():
    # A cycle makes import order matter (the first module imported sees the other half-built), which
    # is what deferred imports and module __getattr__ hooks were papering over; it also means the
    # modules cannot be understood, tested or moved one without the other.
    edges = import_edges()
    found = cycles(edges)
    inside = [f"{e.source} -> {e.target} at {e.where}" for e in edges
              if any(e.source in c and e.target in c for c in found)]
    assert not found, f"import cycles among {found}; their edges:\n" + "\n".join(inside)


def test_imports_point_down_the_layers():
    # Dependencies run one way (solver library -> cells and drivers -> baselines -> row registry ->
    # engine, benchmarks, workflow): each layer can be read and tested with only the ones below it.
    rank = ranks()
    upward = [f"{e.source} ({LAYERS[rank[e.source]][0]}) imports {e.target} ({LAYERS[rank[e.target]][0]}) "
              f"at {e.where}" for e in import_edges() if rank[e.target] > rank[e.source]]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_solver_library_imports_only_itself():
    # The library takes a function and a starting point and knows nothing about what it solves
    # (STYLE.md 2): not the models, the baselines, the engine, the benchmarks, nor the data. (The package's
    # __init__ names its exports through deq.lazy, a stdlib-only helper.)
    library_rank = [name for name, _ in LAYERS].index(SOLVER_LIBRARY)
    library = {module for module, rank in ranks().items() if rank == library_rank}
    assert {"deq", "deq.settings", "deq.solvers", "deq.layer", "deq.backward"} <= library
    outside = [f"{e.source} imports {e.target} at {e.where}" for e in import_edges()
               if e.source in library and e.target not in library | {"deq.lazy"}]
    assert not outside, "the solver library imports beyond itself:\n" + "\n".join(outside)


def package_of(module: str) -> str:
    """The sub-package a module belongs to (``deq.models.lm`` -> ``deq.models``, ``baselines.drivers`` ->
    ``baselines``); a module directly under ``deq`` is its own unit (``deq.study``)."""
    parts = module.split(".")
    if parts[0] != "deq":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "deq"


def test_no_import_cycle_between_packages():
    # Modules without a cycle can still make their packages import each other (deq.models' registry
    # imported baselines, whose drivers import deq.models): then neither package can be read, tested or
    # shipped without the other. Collapse each module to its package and look for cycles again.
    edges = [Edge(package_of(e.source), package_of(e.target), e.where) for e in import_edges()
             if package_of(e.source) != package_of(e.target)]
    found = cycles(edges)
    inside = [f"{e.source} -> {e.target} at {e.where}" for e in edges
              if any(e.source in c and e.target in c for c in found)]
    assert not found, f"import cycles among packages {found}; their edges:\n" + "\n".join(inside)


def workflow_imports() -> list[str]:
    """The modules the Snakefile and its rules import at the top level (what planning the study loads)."""
    import re

    found = []
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        found += [m[1] or m[2] for m in re.finditer(r"^(?:from (\S+) import|import (\S+))", path.read_text(), re.M)]
    return sorted(set(found))


def imports_torch(modules: list[str]) -> bool:
    """Whether importing ``modules`` in a fresh interpreter loads torch."""
    import subprocess
    import sys

    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.strip() == "True"


def test_planning_the_workflow_does_not_import_torch():
    # `snakemake -n all` needs names, budgets and datasets only; importing torch would add 1.5-2 s to every
    # dry run and every job's start. The check itself can see torch: a module that builds models does.
    modules = workflow_imports()
    assert "deq.study" in modules and "deq.rows.configs" in modules
    assert not imports_torch(modules), f"importing {modules} loads torch"
    assert imports_torch(["deq.rows.build"])
