"""Discord's payload rules as pure functions: each case breaks exactly one rule, or none."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.discord_double.limits import (
    FormErrors,
    check_choices,
    check_message,
    check_modal,
    embed_length,
)


def button(custom_id: str = "b", label: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": 2, "style": 1, "custom_id": custom_id, "label": label, **extra}


def row(*components: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(components)}


def errors_for(payload: dict[str, Any], *, creating: bool = True, files: int = 0) -> list[str]:
    errors = FormErrors()
    check_message(errors, payload, creating=creating, file_count=files)
    return [".".join(map(str, item.path)) + ":" + item.code for item in errors.items]


MESSAGE_CASES = [
    ({"content": "x" * 2000}, []),
    ({"content": "x" * 2001}, ["content:BASE_TYPE_MAX_LENGTH"]),
    ({"embeds": [{"title": "t"}] * 10}, []),
    ({"embeds": [{"title": "t"}] * 11}, ["embeds:BASE_TYPE_MAX_LENGTH"]),
    ({"embeds": [{"title": "t" * 257}]}, ["embeds.0.title:BASE_TYPE_MAX_LENGTH"]),
    ({"embeds": [{"description": "d" * 4097}]}, ["embeds.0.description:BASE_TYPE_MAX_LENGTH"]),
    ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, ["embeds.0.fields:BASE_TYPE_MAX_LENGTH"]),
    ({"embeds": [{"fields": [{"name": "n" * 257, "value": "v"}]}]}, ["embeds.0.fields.0.name:BASE_TYPE_BAD_LENGTH"]),
    ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, ["embeds.0.fields.0.value:BASE_TYPE_BAD_LENGTH"]),
    ({"embeds": [{"fields": [{"name": "n", "value": ""}]}]}, ["embeds.0.fields.0.value:BASE_TYPE_BAD_LENGTH"]),
    ({"embeds": [{"footer": {"text": "f" * 2049}}]}, ["embeds.0.footer.text:BASE_TYPE_BAD_LENGTH"]),
    ({"embeds": [{"author": {"name": "a" * 257}}]}, ["embeds.0.author.name:BASE_TYPE_BAD_LENGTH"]),
    ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2000}]}, []),
    ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, ["embeds:MAX_EMBED_SIZE_EXCEEDED"]),
    ({"components": [row(button(f"b{i}")) for i in range(5)]}, []),
    ({"components": [row(button(f"b{i}")) for i in range(6)]}, ["components:BASE_TYPE_MAX_LENGTH"]),
    ({"components": [row(*[button(f"b{i}") for i in range(6)])]}, ["components.0.components:BASE_TYPE_MAX_LENGTH"]),
    ({"components": [row(button("c" * 101))]}, ["components.0.components.0.custom_id:BASE_TYPE_BAD_LENGTH"]),
    ({"components": [row(button(""))]}, ["components.0.components.0.custom_id:BASE_TYPE_BAD_LENGTH"]),
    ({"components": [row(button(label="l" * 81))]}, ["components.0.components.0.label:BASE_TYPE_MAX_LENGTH"]),
    ({"components": [row(button("same"), button("same"))]},
     ["components.0.components.1.custom_id:COMPONENT_CUSTOM_ID_DUPLICATED"]),
    ({"components": [row({"type": 2, "style": 5, "label": "site", "url": "https://example.org"})]}, []),
    ({"components": [button()]}, ["components.0.type:UNION_TYPE_CHOICES"]),
    ({"components": [row({"type": 3, "custom_id": "s", "options": [{"label": "a", "value": "a"}]}, button())]},
     ["components.0.components:COMPONENT_LAYOUT_WIDTH_EXCEEDED"]),
    ({}, [":EMPTY_MESSAGE"]),
]


@pytest.mark.parametrize(("payload", "expected"), MESSAGE_CASES)
def test_message_rules(payload: dict[str, Any], expected: list[str]) -> None:
    assert errors_for(payload) == expected


def test_an_edit_or_a_file_is_not_an_empty_message() -> None:
    assert errors_for({}, creating=False) == []
    assert errors_for({}, files=1) == []


def test_embed_length_counts_what_discord_counts() -> None:
    embed = {
        "title": "ab", "description": "cde", "url": "https://not-counted.example",
        "fields": [{"name": "f", "value": "gh"}], "footer": {"text": "ij", "icon_url": "x"},
        "author": {"name": "k"},
    }
    assert embed_length(embed) == 11


@pytest.mark.parametrize(
    ("choices", "ok"),
    [
        ([{"name": "a", "value": "a"}] * 25, True),
        ([{"name": "a", "value": "a"}] * 26, False),
        ([{"name": "", "value": "a"}], False),
        ([{"name": "n" * 101, "value": "a"}], False),
        ([{"name": "a", "value": "v" * 101}], False),
        ([{"name": "a", "value": 3}], True),
    ],
)
def test_autocomplete_choice_rules(choices: list[dict[str, Any]], ok: bool) -> None:
    errors = FormErrors()
    check_choices(errors, choices)
    assert (not errors) is ok


def text_input(custom_id: str = "t", **extra: Any) -> dict[str, Any]:
    return {"type": 4, "custom_id": custom_id, "style": 1, "label": "Text", **extra}


@pytest.mark.parametrize(
    ("modal", "ok"),
    [
        ({"title": "T", "custom_id": "m", "components": [row(text_input())]}, True),
        ({"title": "T", "custom_id": "m", "components": [{"type": 18, "label": "L", "component": text_input()}]}, True),
        ({"title": "T" * 46, "custom_id": "m", "components": [row(text_input())]}, False),
        ({"title": "T", "custom_id": "m", "components": []}, False),
        ({"title": "T", "custom_id": "m", "components": [row(text_input(f"t{i}")) for i in range(6)]}, False),
        ({"title": "T", "custom_id": "m" * 101, "components": [row(text_input())]}, False),
        ({"title": "T", "custom_id": "m", "components": [row(text_input(value="v" * 4001))]}, False),
        ({"title": "T", "custom_id": "m", "components": [row(text_input(value="v" * 10, max_length=10))]}, True),
        ({"title": "T", "custom_id": "m", "components": [row(text_input(value="v" * 11, max_length=10))]}, False),
        ({"title": "T", "custom_id": "m", "components": [row(text_input(max_length=4001))]}, False),
    ],
)
def test_modal_rules(modal: dict[str, Any], ok: bool) -> None:
    errors = FormErrors()
    check_modal(errors, modal)
    assert (not errors) is ok


def test_error_body_is_discord_shaped() -> None:
    errors = FormErrors()
    check_message(errors, {"content": "x" * 2001, "embeds": [{"title": "t" * 300}]}, creating=True)
    body = errors.to_body()
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    assert body["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    assert body["errors"]["embeds"]["0"]["title"]["_errors"][0]["message"] == "Must be 256 or fewer in length."
