"""The PNG chunks the engine writes (the text itself is tested in tests/recipe)."""

from __future__ import annotations

import io

from PIL import Image

from engine.png_metadata import read_png_metadata, write_png
from engine.protocol import LoraRef, Recipe
from engine.recipe.a1111 import write_parameters

RECIPE = Recipe(
    model="checkpoints/dreamy.safetensors",
    prompt="a cat, oil painting",
    negative_prompt="lowres, watermark",
    loras=(LoraRef("styles/oil.safetensors", 0.8, name="oil", a1111_hash="0123456789ab"),),
    seed=1234,
)


def test_png_chunks_round_trip_and_are_deterministic() -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    text = write_parameters(RECIPE)
    png = write_png(image, text, RECIPE.to_json())
    assert png == write_png(image, text, RECIPE.to_json())
    meta = read_png_metadata(png)
    assert meta["parameters"] == text
    assert Recipe.from_json(meta["recipe"]) == RECIPE


def test_png_without_our_chunks() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_png_metadata(buffer.getvalue()) == {"parameters": None, "recipe": None}
