"""A recipe as a short code a member can paste: ``/imagine recipe:AT1.eNpd…``.

The code is the recipe's JSON with short keys and default values left out, deflated and
written in URL-safe base64 behind a version tag, so it survives copy and paste anywhere
(chat, a forum post, a filename) and decodes to exactly the same :class:`Recipe`. It is no
authority on files: the bot resolves the model and LoRAs it names against the server's
registry like any request, so a code from another server cannot reach files this one never
registered.

Decoding is bounded (code length, inflated size) and every field is type-checked, because a
code is text anyone can type.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from engine.recipe.model import EmbeddingRef, LoraRef, Recipe, RecipeError

PREFIX = "AT1."
#: Longer than any code a real recipe makes (prompts are capped at 6000 characters).
MAX_CODE = 12_000
MAX_INFLATED = 64 * 1024

# short key -> (field, type); the order here is also the order in the JSON.
_FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "m": ("model", str),
    "mn": ("model_name", str),
    "mh": ("model_hash", str),
    "p": ("prompt", str),
    "n": ("negative_prompt", str),
    "s": ("sampler", str),
    "st": ("steps", int),
    "c": ("cfg_scale", (int, float)),
    "sd": ("seed", int),
    "w": ("width", int),
    "h": ("height", int),
    "k": ("count", int),
    "cs": ("clip_skip", int),
    "v": ("vae", str),
    "pt": ("prediction_type", str),
    "a": ("architecture", str),
    "va": ("variant", str),
    "et": ("eta", (int, float)),
    "sh": ("shift", (int, float)),
    "ii": ("init_image", str),
    "is": ("init_image_source", str),
    "ds": ("strength", (int, float)),
    "rm": ("resize_mode", str),
    "hs": ("hires_scale", (int, float)),
    "hn": ("hires_steps", int),
    "hu": ("hires_upscaler", str),
    "hd": ("hires_strength", (int, float)),
}
_DEFAULTS = Recipe(model="", prompt="")


class ShareCodeError(RecipeError):
    """Text that is not a recipe code; the message says what to paste instead."""


def _trim(values: list[Any]) -> list[Any]:
    while values and values[-1] in (None, ""):
        values.pop()
    return values


def encode(recipe: Recipe) -> str:
    """``recipe`` as a code; :func:`decode` gives it back exactly."""
    data: dict[str, Any] = {}
    for short, (name, _kind) in _FIELDS.items():
        value = getattr(recipe, name)
        if name in ("model", "prompt") or value != getattr(_DEFAULTS, name):
            data[short] = value
    if recipe.loras:
        data["l"] = [_trim([lo.file, lo.weight, lo.name, lo.sha256, lo.a1111_hash]) for lo in recipe.loras]
    if recipe.embeddings:
        data["e"] = [_trim([e.file, e.name, e.sha256]) for e in recipe.embeddings]
    # An edit's further pictures (by sha256) and their message links, in order.
    if recipe.references:
        data["r"] = list(recipe.references)
    if recipe.reference_sources:
        data["rs"] = list(recipe.reference_sources)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    packed = zlib.compress(text.encode("utf-8"), 9)
    return PREFIX + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def looks_like_code(text: str) -> bool:
    return text.strip().startswith(PREFIX)


def _check(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ShareCodeError(f"the recipe code's {what} has the wrong type; copy the code again")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    return None if value is None else _check(value, str, what)


def decode(code: str) -> Recipe:
    """The recipe in ``code``; :class:`ShareCodeError` for anything that is not one."""
    text = "".join(code.split())  # pasted codes pick up spaces and line breaks
    if not text.startswith(PREFIX):
        raise ShareCodeError(
            f"a recipe code starts with `{PREFIX}`; copy it from a recipe card or `/recipe show`"
        )
    if len(text) > MAX_CODE:
        raise ShareCodeError(f"this recipe code is {len(text):,} characters, longer than any real one")
    body = text[len(PREFIX):]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise ShareCodeError("this recipe code unpacks to more than a recipe can hold")
        if not inflater.eof:
            raise ShareCodeError("this recipe code is cut off; copy all of it")
        data = json.loads(raw.decode("utf-8"))
    except ShareCodeError:
        raise
    except (binascii.Error, ValueError, zlib.error, UnicodeDecodeError, RecursionError) as exc:
        raise ShareCodeError(f"this recipe code is damaged ({type(exc).__name__}); copy it again") from None
    if not isinstance(data, dict):
        raise ShareCodeError("this recipe code holds no recipe")
    values: dict[str, Any] = {}
    for short, (name, kind) in _FIELDS.items():
        if short in data:
            values[name] = _check(data[short], kind, name)
    for required in ("model", "prompt"):
        if required not in values:
            raise ShareCodeError(f"this recipe code has no {required}")
    loras = []
    for item in _check(data.get("l", []), list, "LoRA list"):
        item = _check(item, list, "LoRA")
        if not 2 <= len(item) <= 5:
            raise ShareCodeError("a LoRA in this recipe code is malformed")
        item = item + [None] * (5 - len(item))
        loras.append(
            LoraRef(
                file=_check(item[0], str, "LoRA file"),
                weight=float(_check(item[1], (int, float), "LoRA weight")),
                name=_optional_str(item[2], "LoRA name") or "",
                sha256=_optional_str(item[3], "LoRA hash"),
                a1111_hash=_optional_str(item[4], "LoRA hash"),
            )
        )
    embeddings = []
    for item in _check(data.get("e", []), list, "embedding list"):
        item = _check(item, list, "embedding")
        if not 2 <= len(item) <= 3:
            raise ShareCodeError("an embedding in this recipe code is malformed")
        item = item + [None] * (3 - len(item))
        embeddings.append(
            EmbeddingRef(
                _check(item[0], str, "embedding file"),
                _check(item[1], str, "embedding name"),
                _optional_str(item[2], "embedding hash"),
            )
        )
    for short, name in (("r", "references"), ("rs", "reference_sources")):
        items = _check(data.get(short, []), list, name)
        values[name] = tuple(_check(item, str, name) for item in items)
    for number in ("cfg_scale", "strength", "hires_scale", "hires_strength"):
        if number in values:
            values[number] = float(values[number])
    for optional in ("eta", "shift"):
        if optional in values:
            values[optional] = float(values[optional])
    return Recipe(loras=tuple(loras), embeddings=tuple(embeddings), **values)
