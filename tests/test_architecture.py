"""The house rules that a reader of the layout relies on, checked on the import graph.

Production code (``bot``, ``engine``) never imports the sandbox (the Discord double, the demo,
the model builder) or the tests: the wheel leaves them out, so such an import would work in a
checkout and break in every real install.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("bot", "engine")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy and TYPE_CHECKING imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def production_modules() -> dict[str, Path]:
    return {module_name(p): p for top in PRODUCTION for p in (ROOT / top).rglob("*.py")}


def test_no_production_module_imports_the_sandbox_or_the_tests() -> None:
    offenders = sorted(
        f"{name} imports {target}"
        for name, path in production_modules().items()
        for target in imports_of(path)
        if target.split(".")[0] in ("sandbox", "tests")
    )
    assert offenders == []


def test_the_import_scan_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The scan above must not miss the imports that hide a dependency."""
    source = ROOT / "bot" / "_probe_for_test.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sandbox import demo\n"
        "def f():\n    from .jobs import store\n",
        encoding="utf-8",
    )
    try:
        seen = imports_of(source)
    finally:
        source.unlink()
    assert {"sandbox.demo", "bot.jobs.store"} <= seen


def import_graph() -> dict[str, set[str]]:
    """Module -> the production modules it imports, lazy and TYPE_CHECKING imports included.

    ``from bot.jobs import Job`` is an edge to ``bot.jobs``; ``from bot.registry import audit``
    (a submodule) is an edge to ``bot.registry.audit`` only: importing a submodule runs its
    package first, but that holds for every submodule and is not a dependency on the package's
    names.
    """
    modules = production_modules()

    def module_of(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [module_of(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else module_of(base)
                    for alias in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t is not None and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_among_production_modules() -> None:
    """Each layer imports only downward (UI -> services -> domain), so any module, a cog
    above all, can be loaded and tested on its own; lazy and TYPE_CHECKING imports count."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_but_the_composition_root_imports_the_client() -> None:
    """``bot.app`` is the top of the house: it builds every part, so nothing may lean on it
    (``bot.assembly`` builds it from the settings, and ``python -m bot`` starts that)."""
    importers = sorted(name for name, edges in import_graph().items() if "bot.app" in edges)
    assert importers == ["bot.assembly"]
