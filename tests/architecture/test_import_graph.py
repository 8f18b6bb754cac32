"""megarl's modules form an acyclic import graph, and every module imports in a fresh interpreter.

The graph is read from the source (ast): every `import`/`from ... import` of a megarl module,
at module level or inside a function (a function-level import that closes a cycle only hides
it), except under `if TYPE_CHECKING:` (never executed).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import megarl

PACKAGE_ROOT = Path(megarl.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, package: str) -> list[str]:
    """Dotted names imported anywhere in `tree`, skipping `if TYPE_CHECKING:` bodies."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the megarl modules it imports}."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for target in _imported(ast.parse(path.read_text(), str(path)), package):
            while target and target not in modules:  # `from megarl.x import function` -> megarl.x
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    """Modules with every megarl module they import listed before them."""
    order: list[str] = []
    done: set[str] = set()

    def place(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for target in sorted(graph[node]):
            place(target)
        order.append(node)

    for node in sorted(graph):
        place(node)
    return order


def test_the_finder_sees_a_cycle_through_a_function_level_import():
    tree = ast.parse("from megarl.b import f\n\ndef g():\n    from megarl.a import h\n")
    assert _imported(tree, "megarl") == ["megarl.b", "megarl.b.f", "megarl.a", "megarl.a.h"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from megarl.a import T\n")
    assert _imported(guarded, "megarl") == ["typing", "typing.TYPE_CHECKING"]


def test_megarl_has_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (move the shared piece into a module both can import): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_every_module_imports_in_dependency_order_in_a_fresh_interpreter():
    order = dependency_order(import_graph())
    script = ("import importlib, sys\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception as err:\n"
              "        raise SystemExit(f'{name}: {type(err).__name__}: {err}')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
