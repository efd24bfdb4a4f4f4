"""Round trips: recipe -> A1111 text -> recipe, recipe -> share code -> recipe, recipe ->
PNG -> recipe, for stacks of 0 to 5 LoRAs with negative weights, unicode, commas, colons,
parentheses, quotes and newlines."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.png_metadata import write_png
from engine.protocol import PREDICTION_TYPES, EmbeddingRef, LoraRef, Recipe
from engine.recipe import a1111, share_code
from engine.recipe.readers import read_image
from engine.recipe.readers.container import decode_user_comment

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RECIPE = Recipe(
    model="checkpoints/dreamy.safetensors",
    model_name="dreamy",
    model_hash="6ce0161689",
    prompt="a cat, oil painting",
    negative_prompt="lowres, watermark",
    loras=(LoraRef("styles/oil.safetensors", 0.8, "oil", a1111_hash="0123456789ab"), LoraRef("cat.safetensors", 1.0, a1111_hash="ba9876543210")),
    steps=25,
    cfg_scale=6.5,
    seed=1234,
    width=512,
    height=768,
)


def test_the_exact_text_a1111_writes() -> None:
    assert a1111.write_parameters(RECIPE, version="atelier 0.1.0") == (
        "a cat, oil painting <lora:oil:0.8> <lora:cat:1>\n"
        "Negative prompt: lowres, watermark\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
        "Size: 512x768, Model hash: 6ce0161689, Model: dreamy, "
        'Lora hashes: "oil: 0123456789ab, cat: ba9876543210", Version: atelier 0.1.0'
    )


def test_clip_skip_embeddings_and_vae_are_written_and_read_back() -> None:
    recipe = dataclasses.replace(
        RECIPE, clip_skip=2, vae="vae/sdxl_vae.safetensors",
        embeddings=(EmbeddingRef("emb/easyneg.safetensors", "easyneg", "ab" * 32),),
    )  # fmt: skip
    text = a1111.write_parameters(recipe)
    assert "Clip skip: 2" in text and "VAE: sdxl_vae.safetensors" in text and 'TI hashes: "easyneg: abababababab"' in text
    assert "Clip skip" not in a1111.write_parameters(RECIPE)  # 1 is A1111's default: not written
    assert a1111.read_parameters(text).recipe == a1111.carried(recipe)


def test_quoting_rules_are_a1111s() -> None:
    assert a1111.quote("plain") == "plain"
    assert a1111.quote("a, b") == '"a, b"'
    assert a1111.quote("key: value") == '"key: value"'
    assert a1111.quote('say "hi"\nthere') == '"say \\"hi\\"\\nthere"'
    assert a1111.quote('say "hi"') == 'say "hi"'  # A1111 leaves a lone quote alone


def test_engine_and_recipe_agree_on_every_sampler() -> None:
    from engine.samplers import SAMPLERS, a1111_base_name, schedule_type

    for name in SAMPLERS:
        assert a1111.split_sampler(name) == (a1111_base_name(name), schedule_type(name))
        assert a1111.join_sampler(*a1111.split_sampler(name)) == name
    assert a1111.join_sampler("DPM++ 2M Karras", None) == "DPM++ 2M Karras"  # A1111 before 1.9


def test_the_long_line_scanner_is_linear_and_matches_a1111() -> None:
    assert a1111.split_params('Steps: 20, Model: "a, b: c", Hashes: {"model": "x, y"}, Seed: 5') == [
        ("Steps", "20"), ("Model", "a, b: c"), ("Hashes", '{"model": "x, y"}'), ("Seed", "5"),
    ]  # fmt: skip
    import time

    # A long line without a colon makes A1111's regular expression backtrack quadratically
    # (measured: 10 kB 2 s, 40 kB 20 s); the scanner reads 250 kB of it in milliseconds.
    started = time.perf_counter()
    assert a1111.split_params("word " * 50_000) == []
    assert a1111.split_params("word " * 50_000 + ": x") == [("word " * 50_000, "x")]  # the key keeps its space, as in A1111
    assert time.perf_counter() - started < 2.0


def test_user_comment_encodings() -> None:
    assert decode_user_comment(b"UNICODE\0" + "héllo".encode("utf-16-be")) == "héllo"
    assert decode_user_comment(b"UNICODE\0" + "héllo".encode("utf-16-le")) == "héllo"
    assert decode_user_comment(b"ASCII\0\0\0hello") == "hello"


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
    | st.sampled_from(list(',:()[]{}"\\\'\n<>|=')),
    max_size=80,
)


def _prompt_ok(text: str) -> bool:
    return a1111._TAG.search(text) is None and not any(line.startswith("Negative prompt:") for line in text.split("\n"))


_PROMPTS = _TEXT.map(str.strip).filter(_prompt_ok)
_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), blacklist_characters=":<>,\\/\r\n"), min_size=1, max_size=20)
_HEX12 = st.text("0123456789abcdef", min_size=12, max_size=12)
_WEIGHTS = st.floats(-3, 3, allow_nan=False)


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    names = draw(st.lists(_NAMES, min_size=0, max_size=5, unique_by=str.casefold))
    loras = tuple(
        LoraRef(f"loras/{i}.safetensors", draw(_WEIGHTS), name, draw(st.none() | _HEX12), draw(st.none() | _HEX12))
        for i, name in enumerate(names)
    )
    embeddings = tuple(EmbeddingRef(f"emb/{n}.pt", n, draw(_HEX12)) for n in draw(st.lists(_NAMES, max_size=2, unique=True)))
    from engine.samplers import SAMPLERS

    return Recipe(
        model="models/x.safetensors",
        model_name=draw(_NAMES),
        model_hash=draw(st.sampled_from(["", "6ce0161689"])),
        prompt=draw(_PROMPTS),
        negative_prompt=draw(_PROMPTS),
        loras=loras,
        sampler=draw(st.sampled_from(SAMPLERS)),
        steps=draw(st.integers(1, 150)),
        cfg_scale=draw(st.floats(0, 30, allow_nan=False)),
        seed=draw(st.integers(0, 2**32 - 1)),
        width=draw(st.integers(1, 256)) * 8,
        height=draw(st.integers(1, 256)) * 8,
        count=draw(st.integers(1, 4)),
        clip_skip=draw(st.integers(1, 4)),
        embeddings=embeddings,
        vae=draw(st.sampled_from(["", "vae/kl-f8.safetensors"])),
        prediction_type=draw(st.sampled_from(PREDICTION_TYPES)),
    )


@FAST
@given(recipes())
def test_recipe_to_a1111_text_and_back(recipe: Recipe) -> None:
    text = a1111.write_parameters(recipe)
    read = a1111.read_parameters(text)
    assert read.recipe == a1111.carried(recipe)
    assert read.missing == ()
    assert a1111.write_parameters(read.recipe) == text  # and the text back again


@FAST
@given(recipes())
def test_recipe_to_share_code_and_back(recipe: Recipe) -> None:
    code = share_code.encode(recipe)
    assert code.startswith("AT1.") and code.isascii() and " " not in code
    assert share_code.decode(code) == recipe
    assert share_code.decode(code[:20] + "\n " + code[20:]) == recipe  # pasted with a line break


@pytest.mark.parametrize("count", range(6))
def test_recipe_to_png_and_back_for_0_to_5_loras(count: int) -> None:
    loras = tuple(LoraRef(f"l/{i}.safetensors", (-1) ** i * (0.25 + i / 7), f"lora {i}, v{i}", a1111_hash=f"{i:012x}") for i in range(count))
    recipe = dataclasses.replace(RECIPE, prompt="über (cat:1.2), [dog]\n\"quoted\": yes", loras=loras)
    png = write_png(Image.new("RGB", (8, 8)), a1111.write_parameters(recipe), recipe.to_json())
    exact = read_image(png).found
    assert exact is not None and exact.exact and exact.recipe == recipe
    # Without our own chunk (another tool dropped it), the A1111 text alone gives the rest.
    text_only = write_png(Image.new("RGB", (8, 8)), a1111.write_parameters(recipe), "{}")
    found = read_image(text_only).found
    assert found is not None and found.format == "AUTOMATIC1111"
    assert found.recipe.prompt == recipe.prompt and found.recipe.seed == recipe.seed
    assert [(r.name, r.weight, r.hashes) for r in found.of_kind("lora")] == [
        (lo.name, lo.weight, (lo.a1111_hash,)) for lo in loras
    ]


def test_share_code_refuses_what_is_not_a_code() -> None:
    for text, words in (
        ("hello", "starts with"),
        ("AT1.abcdefgh", "damaged"),
        (share_code.encode(RECIPE)[:-6], "cut off|damaged"),
        ("AT1." + "A" * 20_000, "longer than"),
    ):
        with pytest.raises(share_code.ShareCodeError, match=words):
            share_code.decode(text)
    import base64
    import json
    import zlib

    bomb = "AT1." + base64.urlsafe_b64encode(zlib.compress(b" " * 300_000, 9)).decode().rstrip("=")
    with pytest.raises(share_code.ShareCodeError, match="more than"):
        share_code.decode(bomb)
    wrong = "AT1." + base64.urlsafe_b64encode(zlib.compress(json.dumps({"m": "x", "p": "y", "st": "20"}).encode())).decode()
    with pytest.raises(share_code.ShareCodeError, match="wrong type"):
        share_code.decode(wrong)


def test_old_stored_recipes_without_the_new_fields_still_load() -> None:
    old = {"model": "m.safetensors", "prompt": "p", "loras": [{"file": "a.safetensors", "weight": 0.5, "name": "a", "sha256": None}]}
    recipe = Recipe.from_json(old)
    assert recipe.clip_skip == 1 and recipe.embeddings == () and recipe.vae == "" and recipe.loras[0].a1111_hash is None
    assert Recipe.from_json(recipe.to_json()) == recipe
