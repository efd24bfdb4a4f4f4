"""AUTOMATIC1111 ``parameters`` text and the PNG chunks (torch-free)."""

from __future__ import annotations

from PIL import Image

from engine.png_metadata import (
    a1111_parameters,
    atelier_version,
    parse_a1111_parameters,
    quote,
    read_png_metadata,
    write_png,
)
from engine.protocol import LoraRef, Recipe

RECIPE = Recipe(
    model="checkpoints/dreamy.safetensors",
    prompt="a cat, oil painting",
    negative_prompt="lowres, watermark",
    loras=(LoraRef("styles/oil.safetensors", 0.8, name="oil"), LoraRef("cat.safetensors", 1.0)),
    sampler="DPM++ 2M Karras",
    steps=25,
    cfg_scale=6.5,
    seed=1234,
    width=512,
    height=768,
)
HASHES = {"oil": "0123456789ab", "cat": "ba9876543210"}


def test_exact_a1111_text() -> None:
    text = a1111_parameters(RECIPE, "6ce0161689", HASHES)
    assert text == (
        "a cat, oil painting <lora:oil:0.8> <lora:cat:1>\n"
        "Negative prompt: lowres, watermark\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
        "Size: 512x768, Model hash: 6ce0161689, Model: dreamy, "
        f'Lora hashes: "oil: 0123456789ab, cat: ba9876543210", Version: atelier {atelier_version()}'
    )


def test_negative_line_omitted_when_empty_and_no_lora_hashes() -> None:
    recipe = Recipe(model="m.safetensors", prompt="hello", seed=3)
    text = a1111_parameters(recipe, "abcdef0123", {})
    lines = text.split("\n")
    assert len(lines) == 2 and lines[0] == "hello"
    assert "Negative prompt" not in text and "Lora hashes" not in text


def test_quoting_rules() -> None:
    assert quote("plain") == "plain"
    assert quote("a, b") == '"a, b"'
    assert quote("key: value") == '"key: value"'
    assert quote('say "hi"\nthere') == '"say \\"hi\\"\\nthere"'


def test_round_trip_through_the_a1111_parser() -> None:
    recipe = Recipe(
        model="x.safetensors",
        model_name='my "best", model: v2',
        prompt="line one\nline two",
        negative_prompt="bad\nworse",
        loras=RECIPE.loras,
        seed=9,
    )
    parsed = parse_a1111_parameters(a1111_parameters(recipe, "1111111111", HASHES, seed=10))
    assert parsed.prompt == "line one\nline two <lora:oil:0.8> <lora:cat:1>"
    assert parsed.negative_prompt == "bad\nworse"
    assert parsed.params["Model"] == 'my "best", model: v2'
    assert parsed.params["Seed"] == "10"
    assert parsed.params["Lora hashes"] == "oil: 0123456789ab, cat: ba9876543210"
    assert parsed.params["Sampler"] == "DPM++ 2M" and parsed.params["Schedule type"] == "Karras"
    assert parsed.params["CFG scale"] == "7"


def test_png_chunks_round_trip_and_are_deterministic() -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    text = a1111_parameters(RECIPE, "6ce0161689", HASHES)
    png = write_png(image, text, RECIPE.to_json())
    assert png == write_png(image, text, RECIPE.to_json())
    meta = read_png_metadata(png)
    assert meta["parameters"] == text
    assert Recipe.from_json(meta["recipe"]) == RECIPE


def test_png_without_our_chunks() -> None:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_png_metadata(buffer.getvalue()) == {"parameters": None, "recipe": None}


def test_lora_names_that_would_break_a1111_fields_are_cleaned_like_a1111_does() -> None:
    recipe = Recipe(
        model="m.safetensors",
        prompt="a cat",
        loras=(
            LoraRef("a.safetensors", 0.5, name="ink: v2, final"),
            LoraRef("b.safetensors", 1, name="<x>"),
        ),
    )
    text = a1111_parameters(
        recipe, "1111111111", {"ink: v2, final": "0123456789ab", "<x>": "ba9876543210"}
    )
    parsed = parse_a1111_parameters(text)
    assert parsed.prompt == "a cat <lora:ink v2, final:0.5> <lora:x:1>"
    hashes = dict(pair.split(": ") for pair in parsed.params["Lora hashes"].split(", "))
    assert hashes == {"ink v2 final": "0123456789ab", "<x>": "ba9876543210"}
