"""pyproject's lower bounds are versions the suite really runs on, and what forced them holds.

The old bounds were guesses: discord.py 2.4 has no ``Interaction.filesize_limit`` (every
/imagine reads it) and diffusers 0.35 ignores ``dtype=``. Now every lower bound is at most
what is installed here, where the whole suite runs, and the two facts are checked on the
installed packages, so a future bump of one of them cannot silently drop below what we use.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
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
