"""Fixtures shared by every test folder.

``demo_assets`` builds the tiny SD 1.5 / SDXL models and demo LoRAs once per test run
(a few seconds on a CPU) so engine, service and bot tests all use real files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tiny models do ~1 ms of work per layer: with several pytest/engine processes sharing two
# cores, torch's intra-op threads spin against each other and make every step ~10x slower.
# (Set before anything imports torch; the bot's tests never import it.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
#: The shared secret of every engine process the tests start: they inherit it from here, as an
#: engine started by an operator reads it from its environment (see engine.auth).
ENGINE_TOKEN = "atelier-tests-engine-token-5f2c9a"
os.environ["ATELIER_ENGINE_TOKEN"] = ENGINE_TOKEN


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory):
    """The tiny demo build (``sandbox.model_builder.DemoAssets``): models, LoRAs and their manifest."""
    from sandbox.model_builder import build_demo_assets

    return build_demo_assets(Path(tmp_path_factory.mktemp("demo-assets")), size="tiny")


@pytest.fixture(scope="session")
def tiny_generator(demo_assets):
    """One ``engine.generate.Generator`` on the demo assets (use it for SD 1.5), shared to load once.

    Tests that count loads or evictions should make their own, or compare before/after.
    """
    from engine.generate import Generator

    return Generator(demo_assets.model_root, demo_assets.lora_root, cache_max_loras=16)


@pytest.fixture(scope="session")
def sdxl_generator(demo_assets):
    """Like ``tiny_generator`` but kept on the SDXL model, so tests never reload either model."""
    from engine.generate import Generator

    return Generator(demo_assets.model_root, demo_assets.lora_root, cache_max_loras=16)
