"""The package's shape: every module imports, the core stays headless, no import cycles.

These are specifications of the layout rather than of behaviour: a module
that fails to import on its own, a core module that pulls in Qt or napari, or
two modules that import each other at module level (which works only as long
as nobody reorders an import) fail here with the offending names.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_cycleulm

PACKAGE = "napari_cycleulm"
PACKAGE_DIR = Path(napari_cycleulm.__file__).resolve().parent

#: Modules allowed to know napari and Qt: the ``_napari`` subpackage (the
#: widgets and the hooks named in napari.yaml).  Everything else is the headless core.
NAPARI_SIDE = (f"{PACKAGE}._napari",)
TESTS = f"{PACKAGE}._tests"

#: Top-level names that must never appear in ``sys.modules`` after importing the core.
GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def package_modules() -> list[str]:
    """Every module of the package except the tests, found by pkgutil."""
    names = [PACKAGE] + [
        m.name for m in pkgutil.walk_packages(napari_cycleulm.__path__, PACKAGE + ".")
    ]
    return sorted(n for n in names if not _within(n, (TESTS,)))


def core_modules() -> list[str]:
    return [n for n in package_modules() if not _within(n, NAPARI_SIDE)]


def _run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"the fresh interpreter failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in %r:
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps({"failures": failures, "modules": sorted(sys.modules)}))
"""


def test_every_module_imports_in_a_fresh_interpreter():
    modules = package_modules()
    assert len(modules) > 30, modules  # pkgutil found the package, not an empty path
    result = _run_fresh(_IMPORT_EACH % (modules,))
    assert not result["failures"], "modules that fail to import:\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in result["failures"].items()
    )


def test_headless_core_never_imports_qt_or_napari():
    modules = core_modules()
    assert PACKAGE in modules and f"{PACKAGE}.pipeline" in modules
    result = _run_fresh(_IMPORT_EACH % (modules,))
    assert not result["failures"], sorted(result["failures"])
    loaded = {m.split(".")[0] for m in result["modules"]}
    gui = sorted(loaded.intersection(GUI_PACKAGES))
    assert not gui, f"importing the headless core loaded {gui}"


# --- import graph -----------------------------------------------------------


def _module_file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    pkg_init = PACKAGE_DIR / rel / "__init__.py"
    return pkg_init if pkg_init.exists() else (PACKAGE_DIR / rel).with_suffix(".py")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported.

    Function bodies run later and ``if TYPE_CHECKING:`` never runs; class
    bodies, ``if``/``try``/``with`` blocks run at import time.
    """
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level_imports(node.body)


def _targets(importer: str, node: ast.stmt, known: set[str]) -> set[str]:
    """Package modules that ``node`` in module ``importer`` causes to be imported."""
    is_pkg = _module_file(importer).name == "__init__.py"
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        names: list[str] = []
    else:
        if node.level:
            parts = importer.split(".")
            anchor = parts if is_pkg else parts[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        bases = [base]
        names = [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in bases + names:
        # Importing a.b.c runs a.b's __init__ too, unless it is already running
        # because it contains the importer.
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and not _within(importer, (prefix,)):
                found.add(prefix)
    found.discard(importer)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports at module level."""
    modules = set(package_modules())
    graph = {}
    for name in sorted(modules):
        tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
        graph[name] = set()
        for node in _module_level_imports(tree.body):
            graph[name] |= _targets(name, node, modules)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module.

    Tarjan's algorithm for the components, then a breadth-first path back to
    the start inside each component so that the message names a real cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:
        if len(comp) < 2:
            continue
        start = min(comp)
        paths = {w: [start, w] for w in sorted(graph[start] & comp)}
        queue = list(paths)
        while start not in paths:
            v = queue.pop(0)
            for w in sorted(graph[v] & comp):
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        cycles.append(paths[start])
    return sorted(cycles)


def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_relative_and_package_imports():
    graph = import_graph()
    # ``from .errors import CycleULMError`` in the top-level __init__
    assert f"{PACKAGE}.errors" in graph[PACKAGE]
    # ``from ..psf import PSF`` inside a subpackage also runs nothing new of its own package
    assert f"{PACKAGE}.psf" in graph[f"{PACKAGE}.localise._common"]
    assert f"{PACKAGE}.localise" not in graph[f"{PACKAGE}.localise._common"]


def test_no_import_cycles_at_module_level():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles at module level:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )
