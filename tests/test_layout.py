"""The layout's rules, checked from the source: no import cycles among our modules, no `sys.path`
edits anywhere, the domain never imports vLLM, and the API process never imports the engine side
(nor torch) at all."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"steer_serve": ROOT / "steer_serve", "steer_serve_vllm": ROOT / "plugins" / "steer_serve_vllm",
            "harness": ROOT / "harness", "loadtests": ROOT / "loadtests"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, lazy ones inside functions included, except `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _runtime_imports(ast.Module([child], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def imported_names(module: str) -> set[str]:
    """Full names of the modules `module` imports (for `from a import b`: a.b if that is a module, else a)."""
    names: set[str] = set()
    for node in _runtime_imports(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in MODULES else node.module)
    return names


def our_imports(module: str) -> set[str]:
    return {name for name in imported_names(module) if name in MODULES and name != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert len(MODULES) > 60, sorted(MODULES)
    assert cycles({module: our_imports(module) for module in MODULES}) == []


def test_the_cycle_check_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def _transitive(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for name in imported_names(current):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("steer_serve.")))
def test_the_domain_never_imports_vllm(module: str) -> None:
    assert not {n for n in _transitive(module) if n.split(".")[0] == "vllm"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("steer_serve_vllm.api")))
def test_the_api_process_imports_neither_the_engine_side_nor_torch(module: str) -> None:
    reached = _transitive(module)
    assert not {n for n in reached if n.startswith("steer_serve_vllm.engine") or n.split(".")[0] == "torch"}


def _touches_sys_path(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id == "sys" for node in ast.walk(tree))


def test_no_sys_path_edits() -> None:
    files = [path for folder in [*PACKAGES.values(), ROOT / "tests", ROOT / "scripts"] for path in folder.rglob("*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in files if _touches_sys_path(ast.parse(path.read_text()))]
    assert offenders == []
    assert _touches_sys_path(ast.parse("import sys\nsys.path.insert(0, 'x')"))
