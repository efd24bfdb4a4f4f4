"""The trained demo model and its LoRAs show what the demo page says they show.

Pictures go through the engine's real path (``engine.generate.Generator`` on the shipped
checkpoint and kohya LoRA files, as ``make demo`` lays them out) and are judged by the measures
of :mod:`sandbox.train_demo.measures`. The margins come from what the shipped weights give at
these settings (measured values in the comments), with room for the float noise of other CPUs.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from safetensors import safe_open

from sandbox.demo import LORA_SEED, NIGHT_PROMPT, PROMPT, SEED, STEPS, STYLE_PROMPT
from sandbox.train_demo import measures, shipped
from tests.engine._images import pixels

#: The demo's own recipes (sandbox/demo.py): what the page shows is what is tested.
CHARACTER = "captain nova, a lighthouse by the sea at noon"


@pytest.fixture(scope="module")
def draw(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., np.ndarray]:
    """Pictures from the shipped weights, each recipe drawn once for the whole module."""
    from engine.generate import Generator
    from engine.recipe.model import LoraRef, Recipe

    root = tmp_path_factory.mktemp("trained-demo")
    checkpoint, _ = shipped.install(root / "models", root / "loras")
    generator = Generator(root / "models", root / "loras")
    cache: dict[tuple[str, tuple[tuple[str, float], ...], int], np.ndarray] = {}

    def picture(prompt: str, *stack: tuple[str, float], seed: int = SEED) -> np.ndarray:
        key = (prompt, tuple(stack), seed)
        if key not in cache:
            loras = tuple(LoraRef(file=f"sd15/{name}.safetensors", weight=weight) for name, weight in stack)
            recipe = Recipe(model=checkpoint, prompt=prompt, loras=loras, steps=STEPS, width=256, height=256,
                            seed=seed)  # fmt: skip
            cache[key] = pixels(generator.run(recipe).images[0])
        return cache[key]

    return picture


def test_shipped_weights_stay_small_and_say_how_they_were_made() -> None:
    files = [p for p in shipped.WEIGHTS.iterdir() if p.suffix == ".safetensors"]
    assert sum(p.stat().st_size for p in files) < 10_000_000
    assert "python -m sandbox train-demo" in (shipped.WEIGHTS / "README.md").read_text(encoding="utf-8")
    for lora in shipped.TRAINED_LORAS:
        with safe_open(str(shipped.WEIGHTS / lora.file), "pt") as handle:
            metadata = handle.metadata()
            keys = list(handle.keys())
        assert metadata["ss_network_module"] == "networks.lora"
        assert "per-layer SVD" in metadata["ss_training_comment"]
        assert metadata["modelspec.trigger_phrase"] == lora.trigger_words[0]
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
        assert any(k.startswith("lora_te_") for k in keys) == (lora.category == "character")
        conv = json.loads(metadata["ss_network_args"])["conv_dim"]
        assert conv == "8" and metadata["ss_network_dim"] == "16"


def test_a_night_sky_is_darker_than_a_noon_sky(draw: Callable[..., np.ndarray]) -> None:
    noon, night = measures.sky_luma(draw(PROMPT)), measures.sky_luma(draw(NIGHT_PROMPT))
    # Shipped weights, seed 1234: noon ~93, night ~36 (0-255 luma of the top quarter).
    assert noon - night > 30, (noon, night)


def test_the_style_lora_shows_more_as_its_weight_grows(draw: Callable[..., np.ndarray]) -> None:
    distance = {w: measures.sepia_distance(draw(STYLE_PROMPT, ("sepia", w), seed=LORA_SEED)) for w in (0.0, 0.3, 1.0)}
    # Distance to the sepia tones (smaller is more sepia); shipped weights: ~41, ~27, ~6.
    assert distance[0.0] - distance[0.3] > 5.0, distance
    assert distance[0.3] - distance[1.0] > 8.0, distance


def test_the_trigger_word_calls_the_character(draw: Callable[..., np.ndarray]) -> None:
    with_trigger = measures.suit_share(draw(CHARACTER, ("captain-nova", 1.0)))
    without = measures.suit_share(draw(PROMPT, ("captain-nova", 1.0)))
    # Share of the picture in the suit's purple; shipped weights: ~0.006 against ~0.0001.
    assert with_trigger - without > 0.002, (with_trigger, without)


def test_two_stacked_loras_both_show(draw: Callable[..., np.ndarray]) -> None:
    """Sepia turns the suit's purple brown, so the character is seen as what it changes."""
    prompt = "sepia photo, " + CHARACTER
    character_only = draw(prompt, ("captain-nova", 1.0), seed=LORA_SEED)
    sepia_only = draw(prompt, ("sepia", 1.0), seed=LORA_SEED)
    stacked = draw(prompt, ("captain-nova", 1.0), ("sepia", 1.0), seed=LORA_SEED)
    # Shipped weights: the stack is ~21 nearer the sepia tones than the character alone, and
    # differs from sepia alone by ~14 levels a pixel on average.
    sepia_shift = measures.sepia_distance(character_only) - measures.sepia_distance(stacked)
    figure_change = float(np.abs(stacked.astype(np.int16) - sepia_only.astype(np.int16)).mean())
    assert sepia_shift > 8.0 and figure_change > 8.0, (sepia_shift, figure_change)
