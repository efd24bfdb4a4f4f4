"""Turning raw ``/imagine`` input into a :class:`ImagineRequest`, before any registry lookup.

Members bring AUTOMATIC1111's inline syntax ``<lora:name:0.7>`` (or a LoRA's Civitai AIR in
place of its name, ``<lora:civitai:120096@135931:0.7>``); those tags are lifted out
of the prompt here and join the slot LoRAs (``lora1``…``lora3``), so validation sees one
stack and can spot the same LoRA given twice. Weights stay text until validation, so that
``0.7.1`` is reported with advice instead of being lost in a Discord number option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.sources.refs import split_inline_air

__all__ = [
    "ImagineRequest",
    "LoraRequest",
    "ParseError",
    "build_request",
    "extract_inline_loras",
    "parse_weight",
]

#: ``<lora:name>``, ``<lora:name:0.7>``; ``<lyco:…>`` (LyCORIS) is accepted the same way.
_INLINE = re.compile(r"<\s*(?:lora|lyco)\s*:([^<>]*)>", re.IGNORECASE)
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_MAX_WEIGHT_TEXT = 24


class ParseError(ValueError):
    """Input that cannot be understood; ``message`` says what is wrong, ``fix`` what to type."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message} {fix}")
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA as the member wrote it: a name and, optionally, a weight still as text."""

    name: str
    #: None: not given, the LoRA's default weight applies. "" (as in ``<lora:x:>``) is an error.
    weight_text: str | None
    origin: Literal["slot", "inline"]
    #: 1-based slot number, or the position among the inline tags.
    position: int = 1

    def describe(self) -> str:
        return (
            f"slot lora{self.position}" if self.origin == "slot" else f"inline tag #{self.position}"
        )


@dataclass(frozen=True)
class ImagineRequest:
    """Everything ``/imagine`` received, with inline LoRAs already lifted out of the prompt."""

    guild_id: int
    channel_id: int
    user_id: int
    channel_is_nsfw: bool
    user_role_ids: frozenset[int]
    prompt: str
    model: str | None
    loras: tuple[LoraRequest, ...] = ()
    negative_prompt: str = ""
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    #: None (or -1, A1111's convention) asks for a random seed, drawn by ``validate``.
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    count: int = 1
    #: None: the model's default clip skip.
    clip_skip: int | None = None
    #: Extra context the bot wants to carry along (not used by validation).
    extras: dict[str, str] = field(default_factory=dict)
    #: ``/imagine speed``: "fast" (the model's fast setting), "normal" (not even where the
    #: server's fast mode is on), None (as the server says).
    speed: str | None = None
    #: The flow-matching shift (DiTs only); None: the profile's, else the model's own.
    shift: float | None = None


def extract_inline_loras(prompt: str) -> tuple[str, list[LoraRequest]]:
    """Remove every ``<lora:name[:weight]>`` tag; return the cleaned prompt and the tags.

    Anything after the second colon stays in ``weight_text`` (``<lora:x:0.7:0.5>`` gives
    ``"0.7:0.5"``), so validation can explain that split weights are not supported.
    """
    found: list[LoraRequest] = []

    def lift(match: re.Match[str]) -> str:
        air = split_inline_air(match[1])
        if air is not None:  # <lora:civitai:120096@135931:0.7>: the LoRA named by its AIR
            name, weight_text = air
        else:
            name, sep, weight = match[1].partition(":")
            weight_text = weight.strip() if sep else None
        found.append(
            LoraRequest(name=name.strip(), weight_text=weight_text, origin="inline", position=len(found) + 1)
        )
        return " "

    cleaned = _INLINE.sub(lift, prompt)
    if found:
        cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
        cleaned = re.sub(r"\s+,", ",", cleaned)
        cleaned = re.sub(r",(?:\s*,)+", ",", cleaned)
        cleaned = cleaned.strip().strip(",").strip()
    return cleaned, found


def parse_weight(text: str | None, default: float) -> float:
    """A LoRA weight from text: ``0.7``, ``.7``, ``-0.5``, ``+1`` are fine; None gives ``default``.

    Refused with a :class:`ParseError`: empty text, ``NaN``, ``inf``, exponents (``1e400``),
    two dots (``0.7.1``), decimal commas, anything not a plain finite decimal.
    """
    if text is None:
        return default
    value = text.strip()
    if not value:
        return _refuse(text, "The weight is empty.")
    if "," in value and _DECIMAL.match(value.replace(",", ".")):
        raise ParseError(
            f"{value!r} uses a decimal comma.", f"Write it with a dot: {value.replace(',', '.')}."
        )
    if ":" in value:
        raise ParseError(
            f"{value!r} gives separate text-encoder and UNet weights, which Atelier does not support.",
            f"Give one weight, e.g. {value.split(':')[0].strip() or '0.7'}.",
        )
    if len(value) > _MAX_WEIGHT_TEXT or not _DECIMAL.match(value):
        return _refuse(value, f"{value[:_MAX_WEIGHT_TEXT]!r} is not a decimal number.")
    number = float(value)
    if not math.isfinite(number):
        return _refuse(value, f"{value!r} is not a finite number.")
    return number + 0.0  # -0.0 becomes 0.0


def _refuse(text: str, message: str) -> float:
    raise ParseError(message, "Write a plain decimal such as 0.7, .7 or -0.5.")


def build_request(
    *,
    guild_id: int,
    channel_id: int,
    user_id: int,
    channel_is_nsfw: bool,
    user_role_ids: Sequence[int] | frozenset[int] = frozenset(),
    prompt: str,
    model: str | None = None,
    slots: Sequence[tuple[str | None, str | float | None]] = (),
    negative_prompt: str | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    count: int | None = None,
    clip_skip: int | None = None,
    speed: str | None = None,
    shift: float | None = None,
) -> ImagineRequest:
    """Assemble a request from ``/imagine``'s options (or a Remix modal).

    ``slots`` are ``(lora_name, weight)`` pairs in slot order; empty names are skipped, a
    numeric weight is kept as its text. Inline tags in the prompt follow the slot LoRAs.
    """
    loras: list[LoraRequest] = []
    for index, (name, weight) in enumerate(slots, start=1):
        weight_text = (
            None if weight is None else (weight if isinstance(weight, str) else repr(float(weight)))
        )
        if name is None or not name.strip():
            # A weight with no LoRA beside it is kept (nameless) so validation reports it:
            # dropping it silently would let the member believe it was applied.
            if weight_text is not None and weight_text.strip():
                loras.append(LoraRequest("", weight_text, "slot", index))
            continue
        loras.append(LoraRequest(name.strip(), weight_text, "slot", index))
    cleaned, inline = extract_inline_loras(prompt or "")
    return ImagineRequest(
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        channel_is_nsfw=channel_is_nsfw,
        user_role_ids=frozenset(user_role_ids),
        prompt=cleaned,
        model=model.strip() if model and model.strip() else None,
        loras=(*loras, *inline),
        negative_prompt=negative_prompt or "",
        sampler=sampler or None,
        steps=steps,
        cfg=cfg,
        seed=seed,
        width=width,
        height=height,
        count=1 if count is None else count,
        clip_skip=clip_skip,
        speed=speed,
        shift=shift,
    )
