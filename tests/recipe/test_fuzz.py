"""The readers see untrusted files: they never raise, never take long, never read unbounded
amounts. Hypothesis budgets are small so the whole file runs in seconds."""

from __future__ import annotations

import json
import time
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.recipe import a1111
from engine.recipe.readers import read_image, read_text
from engine.recipe.readers.container import MAX_CHUNK_TEXT
from tests.recipe import images

BUDGET = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [
    images.png({"parameters": "a cat\nSteps: 1, Seed: 2, Size: 8x8"}),
    images.comfy_png(),
    images.png({"invokeai_metadata": json.dumps(images.INVOKEAI)}),
    images.jpeg_or_webp(images.CIVITAI_TEXT),
]


@BUDGET
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    read = read_image(data)
    assert read.found is None or read.found.recipe is not None


@BUDGET
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_and_truncated_images(seed: bytes, data: st.DataObject) -> None:
    blob = bytearray(seed)
    for _ in range(data.draw(st.integers(0, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    read_image(bytes(blob[:cut]))


@BUDGET
@given(st.text(max_size=2000))
def test_any_text_as_parameters(text: str) -> None:
    read_text(text, source="test")
    a1111.read_parameters(text)


@BUDGET
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
                    max_leaves=40))  # fmt: skip
def test_malformed_json_in_every_slot(value: object) -> None:
    text = json.dumps(value)
    for key in ("parameters", "prompt", "invokeai_metadata", "Comment"):
        read_image(images.png({key: text}))
    for wrapper in ({"sui_image_params": value}, {"civitaiResources": value, "cfgScale": value}, {"base_model": value, "full_prompt": value}):
        read_text(json.dumps(wrapper), source="test")


def test_huge_and_bomb_chunks_are_skipped_quickly() -> None:
    started = time.perf_counter()
    huge = images.png({"parameters": "x" * (MAX_CHUNK_TEXT + 10), "Comment": "{" * 100_000})
    assert read_image(huge).found is None
    # A zTXt chunk that inflates to 100 MB: decompression stops at the cap.
    import struct

    body = b"parameters\0\0" + zlib.compress(b"a" * 100_000_000, 9)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    plain = images.png()
    bomb = plain[:33] + chunk + plain[33:]
    assert read_image(bomb).found is None
    deep = "[" * 50_000 + "]" * 50_000
    assert read_image(images.png({"prompt": deep, "parameters": '{"a":' * 10_000})).found is None
    assert time.perf_counter() - started < 10


def test_prompts_with_every_kind_of_quoting() -> None:
    for prompt in ('say "hi", ok: (a:1.2) [b] {c} \\(d\\)', "Steps: 1, Seed: 2, Size: 3x3", "<lora:x>\n<lora:y:abc>", "\u202e\u200b emoji 🎨"):
        text = f"{prompt}\nSteps: 2, Seed: 3, Size: 8x8, Sampler: Euler"
        found = read_text(text, source="test")
        assert found is not None and found.recipe.seed == 3
