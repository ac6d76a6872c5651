"""The import layering (DESIGN.md): no import circles, and each layer imports only downward.

Every ``import`` statement counts, also those inside functions and under ``TYPE_CHECKING``: a
lazy import is still a dependency a newcomer has to understand.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("nas", "search_spaces", "objectives")

# what a technique may not import: training, the pipeline and everything above it, the spaces
COMPRESS_MAY_NOT = (
    "nas.train",
    "nas.pipeline",
    "nas.teacher",
    "nas.space",
    "search_spaces",
    "nas.search",
    "nas.supernet",
    "nas.runs",
    "nas.run_folder",
    "nas.export",
    "nas.finalize",
)
GROUND_FLOOR = ("nas.errors", "nas.registry", "nas.config", "nas.user_code")
# the floors of CONTRIBUTING.md, from the bottom: a module imports its own floor and those below
FLOORS = (
    GROUND_FLOOR,
    (
        "nas.data",
        "nas.image_data",
        "nas.image_writers",
        "nas.splits",
        "nas.space",
        "nas.train",
        "nas.weights",
        "nas.onnx_utils",
        "nas.svg",
    ),
    ("nas.front", "nas.plots", "nas.search"),  # the study: samplers, storage, workers, drivers
    ("nas.compress", "objectives"),  # techniques and metrics
    ("nas.run_folder", "nas.report"),  # reading a run
    ("search_spaces", "nas.supernet.elastic", "nas.supernet.elastic_layers"),
    ("nas.pipeline", "nas.teacher", "nas.supernet.train", "nas.supernet.latency"),  # one trial
    ("nas.export", "nas.finalize", "nas.supernet"),  # results
    ("nas",),  # the top: runs, html_report, doctor, dashboard, api, cli
)
# modules over ~500 lines (none left; a module that grows past it is split along its seams)
LONG: dict[str, int] = {}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_checker_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    assert _circles(graph) == []


def _floor(module: str) -> int:
    """The floor of the longest prefix that names the module."""
    best = (-1, -1)
    for i, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if _under(module, (p,)) and len(p) > best[1]:
                best = (i, len(p))
    return best[0]


def test_every_module_has_a_floor_and_imports_only_downward(graph: dict[str, set[str]]) -> None:
    assert _floor("nas.compress.slimming") == 3 and _floor("nas.runs") == len(FLOORS) - 1
    up = {(m, t) for m, targets in graph.items() for t in targets if _floor(t) > _floor(m)}
    assert not up, sorted(up)


def test_techniques_import_only_below_them(graph: dict[str, set[str]]) -> None:
    bad = {
        (m, t)
        for m, targets in graph.items()
        if _under(m, ("nas.compress",))
        for t in targets
        if _under(t, COMPRESS_MAY_NOT)
    }
    assert not bad


def test_the_ground_floor_imports_nothing_above_it(graph: dict[str, set[str]]) -> None:
    for m in GROUND_FLOOR:
        assert graph[m] <= set(GROUND_FLOOR), (m, graph[m])


def test_only_the_top_floor_imports_the_nas_package(graph: dict[str, set[str]]) -> None:
    """``import nas`` runs nas/__init__, which reaches every layer: only the CLI and the API may."""
    assert {m for m, targets in graph.items() if "nas" in targets} <= {"nas.cli", "nas.api"}


def test_the_space_registry_never_imports_the_spaces(graph: dict[str, set[str]]) -> None:
    """Spaces are found through the ``nas.spaces`` entry point (pyproject.toml)."""
    assert not {t for t in graph["nas.space"] if _under(t, ("search_spaces",))}


def test_modules_stay_short() -> None:
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= LONG.get(name, MAX_LINES), f"{path}: {lines} lines; split it"
