"""Atelier's sandbox: everything that stands in for the outside world, and nothing production runs.

- :mod:`sandbox.discord_double`: a local Discord (REST + gateway, with Discord's limits and rate
  limits) that a real discord.py bot talks to over the wire;
- :mod:`sandbox.model_builder`: tiny (or full-size, random) models and LoRAs in the real
  architectures and key layouts, built offline;
- :mod:`sandbox.demo`: the scripted offline session behind ``make demo``.

It lives beside ``bot`` and ``engine``, not inside them, so the wheel and the Docker image never
carry it: it may import them, they never import it (``tests/test_architecture.py`` checks).
"""
