"""Atelier's shipped data files (``schema/``, ``configs/``, ``clip/``), not code.

This folder installs as the package ``atelier_data`` (pyproject's ``[tool.setuptools]``); this
file makes it a regular package, so ``importlib.resources`` gives a real folder. Code reads it
through :func:`engine.shipped_data.data_path`, never by a path of its own.
"""
