"""Lifting inline <lora:…> tags out of prompts and parsing weights."""

from __future__ import annotations

import pytest

from bot.request.parse import (
    LoraRequest,
    ParseError,
    build_request,
    extract_inline_loras,
    parse_weight,
)


def test_extract_inline_loras() -> None:
    prompt, loras = extract_inline_loras(
        "a castle, <lora:Neon City:0.7>, at night <LORA:detail> <lyco:grain:-0.5>"
    )
    assert prompt == "a castle, at night"
    assert loras == [
        LoraRequest("Neon City", "0.7", "inline", 1),
        LoraRequest("detail", None, "inline", 2),
        LoraRequest("grain", "-0.5", "inline", 3),
    ]


def test_extract_keeps_extra_colons_and_empty_weight_for_validation() -> None:
    _, loras = extract_inline_loras("<lora:x:0.7:0.5> <lora:y:> <lora::1>")
    assert [(lr.name, lr.weight_text) for lr in loras] == [("x", "0.7:0.5"), ("y", ""), ("", "1")]


def test_prompt_without_tags_is_untouched() -> None:
    text = "  keep   spacing, <not a tag>  "
    assert extract_inline_loras(text) == (text, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.7", 0.7),
        (".7", 0.7),
        ("-0.5", -0.5),
        ("+1", 1.0),
        ("1.", 1.0),
        (" 2 ", 2.0),
        ("-0", 0.0),
        (None, 0.8),
    ],
)
def test_parse_weight_accepts_plain_decimals(text: str | None, expected: float) -> None:
    assert parse_weight(text, 0.8) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NaN", "not a decimal"),
        ("nan", "not a decimal"),
        ("inf", "not a decimal"),
        ("-Infinity", "not a decimal"),
        ("1e400", "not a decimal"),
        ("1e-2", "not a decimal"),
        ("0.7.1", "not a decimal"),
        ("", "empty"),
        ("   ", "empty"),
        ("0,7", "decimal comma"),
        ("0.7:0.5", "separate text-encoder"),
        ("0x1", "not a decimal"),
        ("٣", "not a decimal"),
        ("9" * 400, "not a decimal"),
        ("abc", "not a decimal"),
    ],
)
def test_parse_weight_refuses_with_advice(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        parse_weight(text, 1.0)
    assert info.value.fix


def test_build_request_merges_slots_and_inline() -> None:
    request = build_request(
        guild_id=1,
        channel_id=2,
        user_id=3,
        channel_is_nsfw=False,
        user_role_ids=[7],
        prompt="city <lora:b:0.3>",
        model=" Dream ",
        slots=[("a", 0.5), (None, None), ("  ", "1"), ("c", None)],
    )
    assert request.prompt == "city" and request.model == "Dream"
    assert [(lr.name, lr.weight_text, lr.origin, lr.position) for lr in request.loras] == [
        ("a", "0.5", "slot", 1),
        ("", "1", "slot", 3),  # a weight without its LoRA is kept, for validation to report
        ("c", None, "slot", 4),
        ("b", "0.3", "inline", 1),
    ]
    assert request.user_role_ids == frozenset({7}) and request.count == 1
