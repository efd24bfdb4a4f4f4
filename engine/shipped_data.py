"""Where the files Atelier ships live: SQL migrations, model configs, the CLIP vocabulary.

They are kept in the repository's ``data/`` folder (``schema/``, ``configs/``, ``clip/``), and
the wheel installs that folder as the package ``atelier_data`` (pyproject's
``[tool.setuptools]``), so ``pip install .`` and the Docker image carry them. Both processes
find them through :func:`data_path` alone: the bot's migrations, the engine's component
configs and its tokenizer. Plain Python, no torch: the bot process imports this module.

A source tree (a checkout, an editable install, the tests) reads the ``data/`` beside the
code it runs, so code and data always come from the same tree, even where another copy of
Atelier is installed in the same environment; anywhere else the installed package is read.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

#: The import name ``data/`` gets in an installed wheel.
DATA_PACKAGE = "atelier_data"
_SOURCE_TREE = Path(__file__).resolve().parents[1]


@functools.cache
def data_dir() -> Path:
    """The folder holding ``schema/``, ``configs/`` and ``clip/``."""
    beside = _SOURCE_TREE / "data"
    # pyproject.toml marks a source tree: an installed wheel puts engine/ in site-packages,
    # where no project's pyproject.toml sits (and a stray top-level data/ might).
    if (_SOURCE_TREE / "pyproject.toml").is_file() and beside.is_dir():
        return beside
    try:
        installed = importlib.resources.files(DATA_PACKAGE)
    except ModuleNotFoundError:
        raise RuntimeError(
            f"Atelier's data files (SQL schema, model configs, CLIP vocabulary) are missing: neither "
            f"{beside} nor the package {DATA_PACKAGE!r} exists. Reinstall Atelier (pip install .) "
            "or run it from a complete checkout."
        ) from None
    # Wheels install as plain folders; a zipped install (zipimport) would give no real paths,
    # and the loaders hand these paths to shutil and diffusers.
    if not isinstance(installed, Path):
        raise RuntimeError(
            f"Atelier's data files are inside an archive ({installed}); install Atelier "
            "unzipped (pip install .)."
        )
    return installed


def data_path(*parts: str) -> Path:
    """A file or folder under ``data/``: ``data_path("schema")``, ``data_path("clip", name)``."""
    return data_dir().joinpath(*parts)


__all__ = ["DATA_PACKAGE", "data_dir", "data_path"]
