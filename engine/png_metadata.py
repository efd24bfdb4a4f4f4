"""The recipe inside every PNG: AUTOMATIC1111's ``parameters`` text plus our full JSON recipe.

A1111's PNG Info tab and Civitai read the ``parameters`` tEXt chunk (written by
:func:`engine.recipe.a1111.write_parameters`), so images made here can be inspected and
re-made with those tools; the ``atelier_recipe`` chunk holds the exact recipe (weights, seed,
names, hashes, everything) so it can be re-run bit for bit. Torch-free. Reading other
tools' images is :mod:`engine.recipe.readers`' job.

An image travels far beyond the server that made it, so neither chunk names a file by its
path on the operator's disk: :func:`shareable_recipe` leaves the files empty (as a recipe read
from another tool's image has them, see :mod:`engine.recipe.model`) and keeps the registered
names and the hashes (model AutoV2, each LoRA's sha256 and A1111 hash, each embedding's
sha256), which is how the bot matches them to its registry (``bot.recipes.match``) and how
Civitai and A1111 name them. :func:`recipe_with_files` maps them back to files of one's own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

from engine.recipe.model import Recipe, file_stem

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "atelier_recipe"


def shareable_recipe(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as JSON with every file left empty: names and hashes identify them."""
    data = recipe.to_json()
    data["model"] = ""
    data["model_name"] = recipe.model_label
    data["vae"] = file_stem(recipe.vae) if recipe.vae else ""  # a name, as A1111's "VAE" field
    data["loras"] = [{**lora, "file": "", "name": ref.display_name} for lora, ref in zip(data["loras"], recipe.loras, strict=True)]
    data["embeddings"] = [{**e, "file": ""} for e in data["embeddings"]]
    return data


def recipe_with_files(
    shared: Mapping[str, Any],
    model_file: str,
    lora_files: Mapping[str, str],
    embedding_files: Mapping[str, str] | None = None,
    vae_file: str = "",
) -> Recipe:
    """A shared recipe made runnable on this machine: each file looked up by the name the
    shared recipe gives it (the bot does this against its registry, by hash first)."""
    data = dict(shared)
    data["model"] = model_file
    data["vae"] = vae_file
    data["loras"] = [{**lora, "file": lora_files[lora["name"]]} for lora in shared.get("loras", ())]
    data["embeddings"] = [{**e, "file": (embedding_files or {})[e["name"]]} for e in shared.get("embeddings", ())]
    return Recipe.from_json(data)


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
    """``{"parameters": str | None, "recipe": dict | None}`` from PNG bytes we wrote."""
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
