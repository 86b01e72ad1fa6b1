"""The SDK core has no runtime import cycle, and the base client imports no resource.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``:
an import inside a function counts (it runs on first call and can close a
cycle just as well), an import under ``if TYPE_CHECKING:`` does not (it never
runs). The emulator and the CLI are applications on top of the SDK and are
left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import sprites_async

PACKAGE = "sprites_async"
NOT_CORE = (f"{PACKAGE}.emulator", f"{PACKAGE}._cli")
BASE_CLIENT = f"{PACKAGE}._session"
FACADE = f"{PACKAGE}._client"
RESOURCES = (
    f"{PACKAGE}._sprites",
    f"{PACKAGE}._sprite",
    f"{PACKAGE}._sprite_lifecycle",
    f"{PACKAGE}._exec",
    f"{PACKAGE}._fs",
    f"{PACKAGE}._fs_errors",
    f"{PACKAGE}._fs_path",
    f"{PACKAGE}._fs_tree",
    f"{PACKAGE}._fs_types",
    f"{PACKAGE}._checkpoints",
    f"{PACKAGE}._services",
    f"{PACKAGE}._policy",
    f"{PACKAGE}._ports",
    f"{PACKAGE}._proxy",
    f"{PACKAGE}._control",
    f"{PACKAGE}.fleet",
    f"{PACKAGE}._fleet_limits",
    f"{PACKAGE}._fleet_run",
    FACADE,
)
"""Modules (or packages, with everything inside) that the base client must not load."""

ALLOWED_EDGES: frozenset[tuple[str, str]] = frozenset()
"""Runtime imports left out of the cycle check, each with the reason beside it.

Empty: the facade imports its resources at load time and no resource imports
the facade, so even that edge closes no cycle."""


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name (packages by their own)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that can run: everywhere but the body of ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.orelse:  # the else branch does run
                yield from _runtime_imports(branch)
            continue
        yield from _runtime_imports(child)


def _targets(
    name: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: Iterable[str]
) -> Iterator[str]:
    known = set(known)
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in known else base


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Runtime edges between the package's modules, module-level and function-level alike.

    Importing ``a.b.c`` first runs the packages ``a`` and ``a.b``, so an edge
    also goes to each package enclosing the imported module, unless it
    encloses the importer too (it is then already being imported).
    """
    found = modules(root, package)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _runtime_imports(tree):
            for target in _targets(name, is_package, node, found):
                parts = target.split(".")
                parents = (".".join(parts[:depth]) for depth in range(1, len(parts)))
                for dotted in (target, *parents):
                    implied = dotted != target
                    if dotted not in found or dotted == name:
                        continue
                    if implied and name.startswith(dotted + "."):
                        continue
                    graph[name].add(dotted)
    return graph


def _is_core(name: str) -> bool:
    return not any(name == top or name.startswith(top + ".") for top in NOT_CORE)


def _within(name: str, tops: Iterable[str]) -> bool:
    return any(name == top or name.startswith(top + ".") for top in tops)


def core_graph(root: Path) -> dict[str, set[str]]:
    """The graph of the SDK core only, without :data:`ALLOWED_EDGES`."""
    graph = import_graph(root)
    return {
        name: {t for t in targets if _is_core(t) and (name, t) not in ALLOWED_EDGES}
        for name, targets in graph.items()
        if _is_core(name)
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` can load, at once or later."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


ROOT = Path(sprites_async.__file__).parent


# -------------------------------------------------------------- the SDK itself


def test_the_core_has_no_runtime_import_cycle() -> None:
    graph = core_graph(ROOT)
    assert len(graph) > 15  # the walk found the package
    assert cycles(graph) == []


def test_the_base_client_loads_no_resource() -> None:
    graph = core_graph(ROOT)
    names = set(graph)
    for top in RESOURCES:  # a renamed module must not make this test pass by default
        assert _within(top, names) or top in names, f"{top} does not exist any more"
    loaded = reachable(graph, BASE_CLIENT)
    assert sorted(m for m in loaded if _within(m, RESOURCES)) == []


def test_only_the_package_imports_the_facade() -> None:
    graph = core_graph(ROOT)
    importers = sorted(name for name, targets in graph.items() if FACADE in targets)
    assert importers == [PACKAGE]


@pytest.mark.parametrize(
    ("part", "at_least"),
    [
        # The emulator is an application, left out of the core's graph, but
        # its modules form a layered whole too: shared state at the bottom,
        # features above it. A module low down reaches one above through the
        # state (a registry it fills in, as ``state.sessions`` and
        # ``state.services``).
        pytest.param(NOT_CORE[0], 20, id="emulator"),
        # The CLI package builds the parser from the command modules; they
        # take what they share (exit statuses, Context, the word layout) from
        # leaf modules, never from the package that imports them.
        pytest.param(NOT_CORE[1], 5, id="cli"),
    ],
)
def test_the_parts_outside_the_core_have_no_runtime_import_cycle(part: str, at_least: int) -> None:
    graph = {
        name: {t for t in targets if _within(t, [part])}
        for name, targets in import_graph(ROOT).items()
        if _within(name, [part])
    }
    assert len(graph) > at_least  # the walk found the package
    assert cycles(graph) == []


# ------------------------------------------------------ the checker, on samples


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, source in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_a_function_level_import_closes_a_cycle(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_a.py": "from ._b import x\n",
            "_b.py": "def f():\n    from ._a import y\n",
        },
    )
    assert cycles(import_graph(root)) == [[f"{PACKAGE}._a", f"{PACKAGE}._b"]]


def test_an_import_for_type_checking_only_closes_none(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_a.py": "from ._b import x\n",
            "_b.py": (
                "import typing\nif typing.TYPE_CHECKING:\n    from ._a import y\n"
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _a\n"
            ),
        },
    )
    assert cycles(import_graph(root)) == []


def test_the_else_branch_of_type_checking_runs(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_a.py": "from ._b import x\n",
            "_b.py": "if TYPE_CHECKING:\n    pass\nelse:\n    from . import _a\n",
        },
    )
    assert cycles(import_graph(root)) == [[f"{PACKAGE}._a", f"{PACKAGE}._b"]]


def test_imports_into_and_out_of_a_subpackage(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_exec/__init__.py": "from ._proto import P\nfrom . import _io\n",
            "_exec/_proto.py": "from .._frames import f\n",
            "_exec/_io.py": "from ._proto import P\nfrom .. import _frames\n",
            "_frames.py": "def f():\n    from ._exec._io import g\n",
        },
    )
    graph = import_graph(root)
    assert graph[f"{PACKAGE}._exec"] == {f"{PACKAGE}._exec._proto", f"{PACKAGE}._exec._io"}
    assert graph[f"{PACKAGE}._exec._proto"] == {f"{PACKAGE}._frames"}
    # importing _exec._io first runs the package _exec, and so the cycle
    assert graph[f"{PACKAGE}._frames"] == {f"{PACKAGE}._exec", f"{PACKAGE}._exec._io"}
    assert cycles(graph) == [
        [
            f"{PACKAGE}._exec",
            f"{PACKAGE}._exec._io",
            f"{PACKAGE}._exec._proto",
            f"{PACKAGE}._frames",
        ]
    ]


def test_reachable_follows_imports_transitively(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_session.py": "def load():\n    from ._telemetry import T\n",
            "_telemetry.py": "from ._control import pool\n",
            "_control.py": "",
        },
    )
    loaded = reachable(import_graph(root), BASE_CLIENT)
    assert loaded == {f"{PACKAGE}._telemetry", f"{PACKAGE}._control"}
