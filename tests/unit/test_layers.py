"""The import graph of ``src/mlsignal``: no cycles, and every import points down the layers.

Static analysis with :mod:`ast`, so nothing is imported and nothing of torch loads. Every
``import``/``from ... import`` counts, at module level and inside functions (a lazy import is
still a dependency). Edges are resolved like this:

- ``import a.b.c`` is an import of ``a.b.c``;
- ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``;
- relative imports are resolved against the importing module's package;
- imports under ``if TYPE_CHECKING:`` count for the layer rules, not for cycles (they never
  run);
- a package's ``__init__`` importing from its own subtree inside a function or under
  TYPE_CHECKING (a lazy re-export: ``mlsignal/__init__``'s ``__getattr__`` gives
  ``MLSignalEnhancer``) is not a dependency of the package: nothing runs it until the name
  is used. Eager re-exports
  (``server/__init__`` importing the app) count: they run whenever the package is imported.

The layer table (DESIGN.md, "Layers"; docs/ARCHITECTURE.md) is :data:`LAYERS` and
:data:`PLACES`: edit them when a module moves. ``MLSIGNAL_LAYERS_SRC=/other/src`` points the
test at another checkout (e.g. to see it fail on code from before issue 11).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(os.environ.get("MLSIGNAL_LAYERS_SRC") or Path(__file__).parents[2] / "src")
ROOT = "mlsignal"

#: Layers, lowest first. A module may import its own layer and the layers below it.
LAYERS = (
    "base",  # errors, signature, logs, the package root (__version__): import nothing of ours
    "config",
    "data",
    "features",
    "rules",
    "models",
    "bundle",
    "training",
    "runtime",
    "wire",
    "pipeline",
    "client",
    "server",
    "enhancer",
    "live",
    "adapters",  # other tools' plug-ins (freqtrade): the enhancer and data, as a user calls them
    "evaluate",
    "bench",
    "cli",
)

#: Module (or package, for everything under it) -> layer; the longest matching prefix wins.
#: Top-level modules are placed by what they import and who imports them.
PLACES = {
    "mlsignal": "base",  # the package root: __version__ (its lazy MLSignalEnhancer is a re-export)
    "mlsignal.errors": "base",
    "mlsignal.signature": "base",  # the feature/model signature: imports errors at most
    "mlsignal.logs": "base",  # stdlib logging set-up, used by the cli and the server
    "mlsignal.config": "config",
    "mlsignal.data": "data",
    "mlsignal.features": "features",
    "mlsignal.rules": "rules",
    "mlsignal.models": "models",
    "mlsignal.bundle": "bundle",
    "mlsignal.training": "training",
    "mlsignal.runtime": "runtime",
    # exporters: build a runtime's graph from a bundle and check it against the runtimes
    "mlsignal.onnx_export": "runtime",
    "mlsignal.triton_export": "runtime",
    "mlsignal.wire": "wire",
    # prepare and finish (bars -> window; outputs -> ml_info); forward is a runtime or remote
    "mlsignal.pipeline": "pipeline",
    "mlsignal.client": "client",
    "mlsignal.server": "server",
    "mlsignal.enhancer": "enhancer",
    "mlsignal.remote_mode": "enhancer",  # the enhancer's remote half: client + pipeline
    "mlsignal.frames": "enhancer",  # per-row scoring (score_frame): pipeline + a forward
    "mlsignal.live": "live",
    "mlsignal.adapters": "adapters",
    "mlsignal.evaluate": "evaluate",
    "mlsignal.bench": "bench",
    "mlsignal.cli": "cli",
}

#: (importer prefix, imported prefix): never, whatever the layers say (DESIGN.md).
FORBIDDEN = (
    # client and server share only the wire schema
    ("mlsignal.client", "mlsignal.server"),
    ("mlsignal.server", "mlsignal.client"),
    # a remote-only trading host runs the client without torch or the training code
    ("mlsignal.client", "torch"),
    ("mlsignal.client", "mlsignal.training"),
    # command modules share cli/options; cli/main imports them (lazily), never the reverse
    ("mlsignal.cli", "mlsignal.cli.main"),
    # the bundle carries the configs, so inference never imports training
    *(
        (user, "mlsignal.training")
        for user in (
            "mlsignal.runtime",
            "mlsignal.wire",
            "mlsignal.pipeline",
            "mlsignal.server",
            "mlsignal.enhancer",
            "mlsignal.remote_mode",
            "mlsignal.live",
        )
    ),
)

#: (importer, imported) edges allowed against the layers, each with its reason.
ALLOWED = {
    # training writes model.onnx into the bundle it trains (lazily, after fitting); the
    # exporter checks the graph against the runtimes, so it lives at the runtime layer.
    ("mlsignal.training.pipeline", "mlsignal.onnx_export"),
}


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` at ``line``; ``typing_only`` under TYPE_CHECKING,
    ``lazy`` inside a function."""

    importer: str
    imported: str
    line: int
    typing_only: bool
    lazy: bool


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``src``: dotted name -> file."""
    out = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _lines_under(tree: ast.Module) -> tuple[set[int], set[int]]:
    """Line numbers of the statements under ``if TYPE_CHECKING:``, and inside functions."""
    typing: set[int] = set()
    lazy: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                typing.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return typing, lazy


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """Dotted names this import statement imports (not yet filtered to our modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_pkg else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every import in ``path``, resolved to a module of ours or a third-party top name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing, lazy = _lines_under(tree)
    is_pkg = path.name == "__init__.py"
    edges = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = _targets(node, module, is_pkg)
        if isinstance(node, ast.ImportFrom):
            subs = [n for n in names[1:] if n in modules]  # `from pkg import submodule`
            if len(subs) < len(names) - 1:  # some name is not a module: an import of pkg
                subs.append(names[0])
            names = subs
        line = node.lineno
        for name in names:
            edges.append(Edge(module, _resolve(name, modules), line, line in typing, line in lazy))
    return edges


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """Ours: the longest prefix of ``name`` that is a module (``name`` itself if none is);
    third-party: its top-level package."""
    if name.split(".")[0] != ROOT:
        return name.split(".")[0]
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if len(parts) > 1 else name  # not found: keep the name


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def import_graph(src: Path = SRC) -> list[Edge]:
    """Every edge between our modules and to third-party packages, lazy re-exports left out."""
    modules = module_files(src)
    edges = []
    for module, path in modules.items():
        for e in imports_of(module, path, modules):
            reexport = path.name == "__init__.py" and _within(e.imported, module)
            if not (reexport and (e.lazy or e.typing_only)) and e.imported != module:
                edges.append(e)
    return edges


def layer_of(module: str) -> str:
    """The layer of ``module`` from :data:`PLACES` (longest prefix)."""
    best = max((p for p in PLACES if _within(module, p)), key=len, default=None)
    if best is None:
        raise KeyError(f"{module} has no layer: add it to PLACES in {__file__}")
    return PLACES[best]


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) per strongly connected component of ours (the
    component may hold more modules: fix this cycle and run again)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.typing_only and e.imported.startswith(ROOT):
            graph.setdefault(e.importer, set()).add(e.imported)
    cycles = []
    for scc in _sccs(graph):
        if len(scc) > 1:
            cycles.append(_cycle_in(sorted(scc)[0], scc, graph))
    return cycles


def _sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        scc.add(top)
                        if top == node:
                            break
                    out.append(scc)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _cycle_in(start: str, scc: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``scc`` (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ()) & scc):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in prev:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def upward_imports(edges: list[Edge]) -> list[str]:
    """Imports that point up the layers, or that :data:`FORBIDDEN` rules out."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for e in edges:
        where = f"{e.importer} (line {e.line}) imports {e.imported}"
        if any(_within(e.importer, a) and _within(e.imported, b) for a, b in FORBIDDEN):
            bad.append(f"{where}: forbidden by DESIGN.md")
        elif not e.imported.startswith(ROOT) or (e.importer, e.imported) in ALLOWED:
            continue
        elif rank[layer_of(e.imported)] > rank[layer_of(e.importer)]:
            up, down = layer_of(e.importer), layer_of(e.imported)
            bad.append(f"{where}: layer {up} must not import layer {down}")
    return bad


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    """The import graph of the checkout under test."""
    return import_graph()


def test_every_module_has_a_layer(edges):
    missing = [m for m in module_files() if not any(_within(m, p) for p in PLACES)]
    assert not missing, f"add these modules to PLACES: {missing}"
    assert set(PLACES.values()) <= set(LAYERS)


def test_no_import_cycles(edges):
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers(edges):
    bad = upward_imports(edges)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_known_exceptions_still_exist(edges):
    """An exception nobody needs any more is deleted, so it cannot hide a new import."""
    present = {(e.importer, e.imported) for e in edges}
    stale = sorted(ALLOWED - present)
    assert not stale, f"remove these from ALLOWED, the imports are gone: {stale}"


def test_the_analysis_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mlsignal.sub import f\n"
        "def __getattr__(name):\n    from mlsignal.sub import mod\n"
    )
    (pkg / "errors.py").write_text("from mlsignal import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from .mod import f\n")
    (pkg / "sub" / "mod.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mlsignal.sub import other\n"
        "def f():\n    from ..errors import X\n    import torch\n"
    )
    (pkg / "sub" / "other.py").write_text("from mlsignal.sub import mod, f\n")
    got = {(e.importer, e.imported, e.typing_only, e.lazy) for e in import_graph(tmp_path)}
    assert ("mlsignal.sub.mod", "mlsignal.errors", False, True) in got  # lazy, relative
    assert ("mlsignal.sub.mod", "torch", False, True) in got
    assert ("mlsignal.sub.mod", "mlsignal.sub.other", True, False) in got  # TYPE_CHECKING
    assert ("mlsignal.errors", "mlsignal.sub", False, False) in got  # a package is a module
    assert ("mlsignal.sub", "mlsignal.sub.mod", False, False) in got  # an eager re-export
    # `from pkg import module, name`: the module, and the package for the name
    assert ("mlsignal.sub.other", "mlsignal.sub.mod", False, False) in got
    assert ("mlsignal.sub.other", "mlsignal.sub", False, False) in got
    assert not any(e[1].startswith("mlsignal.") for e in got if e[0] == "mlsignal")  # lazy
    cycles = find_cycles(import_graph(tmp_path))
    assert cycles == [["mlsignal.errors", "mlsignal.sub", "mlsignal.sub.mod", "mlsignal.errors"]]


def test_upward_and_forbidden_imports_are_reported(tmp_path):
    pkg = tmp_path / ROOT
    (pkg / "client").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "client" / "__init__.py").write_text("")
    (pkg / "data.py").write_text("def f():\n    from mlsignal.cli import main\n")
    (pkg / "cli.py").write_text("from mlsignal import data\n")
    (pkg / "client" / "remote.py").write_text("import torch\nfrom mlsignal.training import fit\n")
    bad = upward_imports(import_graph(tmp_path))
    assert bad == [
        "mlsignal.client.remote (line 1) imports torch: forbidden by DESIGN.md",
        "mlsignal.client.remote (line 2) imports mlsignal.training: forbidden by DESIGN.md",
        "mlsignal.data (line 2) imports mlsignal.cli: layer data must not import layer cli",
    ]
