"""pyproject's lower bounds are versions the suite really runs on, and what forced them holds;
and every package the code imports is declared for the process that imports it.

The old bounds were guesses: discord.py 2.4 has no ``Interaction.filesize_limit`` (every
/imagine reads it) and diffusers 0.35 ignores ``dtype=``. Now every lower bound is at most
what is installed here, where the whole suite runs, and the two facts are checked on the
installed packages, so a future bump of one of them cannot silently drop below what we use.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _bounds() -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        assert match, f"{requirement!r} has no lower bound: give it the version the tests run on"
        found[match[1]] = match[2]
    return found


def test_every_lower_bound_is_at_most_the_tested_version() -> None:
    for name, minimum in _bounds().items():
        installed = metadata.version(name)
        assert _version(installed) >= _version(minimum), f"{name} {installed} is below the declared {minimum}"


def test_what_forced_the_bounds_is_there() -> None:
    import discord

    bounds = _bounds()
    assert _version(bounds["discord.py"]) >= (2, 6)  # filesize_limit arrived in 2.6
    assert "filesize_limit" in discord.Interaction.__slots__
    assert _version(bounds["diffusers"]) >= (0, 42)
    # Read, not imported: importing diffusers costs seconds (torch), the text is what matters.
    spec = importlib.util.find_spec("diffusers")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "pipelines" / "pipeline_utils.py").read_text()
    assert 'kwargs.pop("dtype"' in source  # from_pretrained(dtype=...) is honoured


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised as PEP 503 does (``discord.py`` -> ``discord-py``)."""
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def _imported_distributions(package: str) -> dict[str, set[str]]:
    """Third-party distributions ``package`` imports anywhere (lazy imports included), with
    the files that import each."""
    distributions = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", "bot", "engine", "atelier_data"):
                    continue
                owners = distributions.get(top)
                assert owners, f"{path.relative_to(ROOT)} imports {top!r}, which no installed distribution provides"
                for owner in owners:
                    found.setdefault(_name(owner), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_for_the_process_that_makes_it() -> None:
    """The bot gets ``dependencies`` (and the optional ``safety`` check, imported only when
    installed); the engine gets those and its ``engine`` extra. The ``test`` extra counts for
    neither: an install without it must still run."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    base = {_name(r) for r in project["dependencies"]}
    allowed = {"bot": base | {_name(r) for r in extras["safety"]}, "engine": base | {_name(r) for r in extras["engine"] + extras["cluster"]}}
    for package, declared in allowed.items():
        undeclared = {name: sorted(files) for name, files in _imported_distributions(package).items() if name not in declared}
        assert not undeclared, f"{package}/ imports packages pyproject does not declare for it: {undeclared}"
