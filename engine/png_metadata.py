"""The recipe inside every PNG: AUTOMATIC1111's ``parameters`` text plus our full JSON recipe.

A1111's PNG Info tab and Civitai read the ``parameters`` tEXt chunk, so images made here can be
inspected and re-made with those tools; the ``atelier_recipe`` chunk holds the exact recipe
(file paths, weights, everything) so the bot can re-run an image bit for bit. Torch-free: the
bot uses this module to read images back.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

from PIL import Image, PngImagePlugin

from engine.protocol import Recipe

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "atelier_recipe"
#: A1111's parameter matcher (modules/infotext_utils.py): key, then a quoted or bare value.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def atelier_version() -> str:
    try:
        return importlib_metadata.version("atelier")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0"


def quote(value: str) -> str:
    """A1111's rule: values with ``,`` ``:`` or a newline are written as JSON strings."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _number(value: float) -> str:
    return f"{value:g}"


def _alias(name: str, drop: str) -> str:
    """A LoRA name as A1111 writes it: without the characters that would split its field."""
    return "".join(ch for ch in name if ch not in drop) or "lora"


def prompt_with_lora_tags(recipe: Recipe) -> str:
    """The prompt as A1111 would show it: the stack as ``<lora:name:weight>`` tags.

    A1111 splits a tag's arguments on ``:`` and ends it at ``>``, so those leave the name.
    """
    tags = " ".join(
        f"<lora:{_alias(lora.display_name, ':<>')}:{_number(lora.weight)}>" for lora in recipe.loras
    )
    return f"{recipe.prompt} {tags}".strip() if tags else recipe.prompt


def model_display_name(recipe: Recipe) -> str:
    if recipe.model_name:
        return recipe.model_name
    return recipe.model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors")


def a1111_parameters(
    recipe: Recipe,
    model_hash: str,
    lora_hashes: Mapping[str, str],
    *,
    seed: int | None = None,
    ti_hashes: Mapping[str, str] | None = None,
    vae_hash: str | None = None,
) -> str:
    """The ``parameters`` text for one image (``seed`` defaults to the recipe's).

    ``ti_hashes`` are the embeddings the prompt used (name -> 12 hex), A1111's ``TI hashes``.
    A recipe VAE is written as A1111 does, ``VAE hash`` (AutoV2) and ``VAE`` (the file name).
    """
    from engine.samplers import a1111_base_name, schedule_type

    fields: list[tuple[str, str]] = [
        ("Steps", str(recipe.steps)),
        ("Sampler", a1111_base_name(recipe.sampler)),
        ("Schedule type", schedule_type(recipe.sampler)),
        ("CFG scale", _number(recipe.cfg_scale)),
        ("Seed", str(recipe.seed if seed is None else seed)),
        ("Size", f"{recipe.width}x{recipe.height}"),
        ("Model hash", model_hash),
        ("Model", model_display_name(recipe)),
    ]
    if recipe.vae:
        if vae_hash:
            fields.append(("VAE hash", vae_hash))
        fields.append(("VAE", recipe.vae.rsplit("/", 1)[-1]))
    if recipe.clip_skip > 1:  # A1111 writes it only when it is not the default
        fields.append(("Clip skip", str(recipe.clip_skip)))
    if ti_hashes:
        fields.append(("TI hashes", ", ".join(f"{_alias(n, ':,')}: {h}" for n, h in ti_hashes.items())))
    if lora_hashes:
        # A1111 (extensions-builtin/Lora/networks.py) strips ":" and "," from each alias so
        # the "name: hash, name: hash" list can be split again.
        pairs = (f"{_alias(name, ':,')}: {h}" for name, h in lora_hashes.items())
        fields.append(("Lora hashes", ", ".join(pairs)))
    fields.append(("Version", f"atelier {atelier_version()}"))
    lines = [prompt_with_lora_tags(recipe)]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields))
    return "\n".join(lines)


@dataclass(frozen=True)
class ParsedParameters:
    prompt: str
    negative_prompt: str
    params: dict[str, str]

    @property
    def clip_skip(self) -> int:
        """``Clip skip: N`` (1, A1111's default, when absent or unreadable)."""
        try:
            value = int(self.params.get("Clip skip", "1"))
        except ValueError:
            return 1
        return value if 1 <= value <= 12 else 1

    @property
    def ti_hashes(self) -> dict[str, str]:
        """``TI hashes: "name: hash, ..."`` as a mapping."""
        return _hash_list(self.params.get("TI hashes", ""))


def _hash_list(text: str) -> dict[str, str]:
    pairs = (item.rpartition(":") for item in text.split(","))
    return {name.strip(): value.strip() for name, sep, value in pairs if sep and name.strip()}


def parse_a1111_parameters(text: str) -> ParsedParameters:
    """Read ``parameters`` text the way A1111's PNG Info does."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM_RE.findall(lines[-1])) >= 3:
        params = {key: unquote(value) for key, value in _PARAM_RE.findall(lines.pop())}
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line.removeprefix("Negative prompt:").lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return ParsedParameters("\n".join(prompt_lines), "\n".join(negative_lines), params)


def write_png(image: Image.Image, parameters: str, recipe_json: Mapping[str, Any] | str) -> bytes:
    """Encode ``image`` as PNG carrying both chunks (deterministic: same pixels, same bytes)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    text = recipe_json if isinstance(recipe_json, str) else json.dumps(recipe_json, sort_keys=True)
    info.add_text(RECIPE_KEY, text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_metadata(data: bytes) -> dict[str, Any]:
    """``{"parameters": str | None, "recipe": dict | None}`` from PNG bytes."""
    with Image.open(io.BytesIO(data)) as image:
        text = dict(getattr(image, "text", {}) or image.info)
    recipe_text = text.get(RECIPE_KEY)
    recipe = None
    if isinstance(recipe_text, str):
        try:
            recipe = json.loads(recipe_text)
        except json.JSONDecodeError:
            recipe = None
    parameters = text.get(PARAMETERS_KEY)
    return {"parameters": parameters if isinstance(parameters, str) else None, "recipe": recipe}
