"""No import cycles among the modules of fastconv at import time.

Every module under ``src/fastconv`` is parsed with :mod:`ast`; an edge
``a -> b`` is an import of ``b`` that runs when ``a`` is imported (module
level, including ``if``/``try`` blocks and class bodies, but not function
bodies nor ``if TYPE_CHECKING:`` blocks).  Relative imports are resolved;
``from . import a`` names the module ``fastconv.a`` when it is one, else the
package.  Backends that :mod:`fastconv._dispatch` imports by name on first
use are not import-time edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fastconv"


def _modules() -> dict:
    """Module name -> (path, is_package) for every module of the package."""
    mods = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        mods[".".join(parts)] = (path, is_package)
    return mods


def _is_type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node, lazy: bool):
    """Import statements under ``node``; function bodies only with ``lazy``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
            continue
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), lazy)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _imports(child, lazy)


def import_graph(lazy: bool = False) -> dict:
    """``{module: {imported module: [line, ...]}}`` within the package."""
    mods = _modules()
    graph = {m: {} for m in mods}
    for name, (path, is_package) in mods.items():
        base = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    parts = base.split(".")
                    parts = parts[:len(parts) - (node.level - 1)]
                    origin = ".".join(parts + ([node.module] if node.module else []))
                else:
                    origin = node.module
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin
                           for a in node.names]
            for target in targets:
                while target and target not in mods:  # fastconv.x.name -> fastconv.x
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, []).append(node.lineno)
    return graph


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = "done"
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def _describe(graph, cycle) -> str:
    return "\n".join(f"  {a} -> {b} (line {', '.join(map(str, graph[a][b]))})"
                     for a, b in zip(cycle, cycle[1:]))


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "fastconv._dispatch" in graph["fastconv._api"]  # from ._dispatch import ...
    assert "fastconv.cpu.direct" in graph["fastconv.cpu"]  # from . import direct
    assert "fastconv.cuda" not in graph["fastconv._api"]  # inside a function
    assert "fastconv.cuda" in import_graph(lazy=True)["fastconv._api"]
    assert find_cycle({"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_at_import_time():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among module-level imports:\n" + _describe(graph, cycle)
