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
