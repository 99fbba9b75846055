"""The package's import graph has no cycles (function-level imports included), so every module
can be read, tested and replaced from the bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

import bootllama

PACKAGE = Path(bootllama.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = PACKAGE.parent.joinpath(*name.split("."))
    return rel.with_suffix(".py").exists() or (rel / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The bootllama modules a source file imports, anywhere in it (``from bootllama.pcs import
    qemu`` counts as bootllama.pcs.qemu when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bootllama" or node.module.startswith("bootllama."):
                subs = {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
                found |= subs or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bootllama.")}
    return found - {"bootllama"}


def graph() -> dict[str, set[str]]:
    """Module -> the bootllama modules it imports, for every module of the package."""
    return {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")
            if module_name(p) != "bootllama"}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles() -> None:
    g = graph()
    assert "bootllama.libm" in g["bootllama.reference"]
    assert "bootllama.reference" not in g["bootllama.checkpoint"]
    assert find_cycle(g) is None, " -> ".join(find_cycle(g) or [])


def test_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_libm_needs_nothing_but_numpy() -> None:
    assert graph()["bootllama.libm"] == set()
