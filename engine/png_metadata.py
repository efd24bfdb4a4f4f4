"""The recipe inside every PNG: AUTOMATIC1111's ``parameters`` text plus our full JSON recipe.

A1111's PNG Info tab and Civitai read the ``parameters`` tEXt chunk (written by
:func:`engine.recipe.a1111.write_parameters`), so images made here can be inspected and
re-made with those tools; the ``atelier_recipe`` chunk holds the exact recipe (file paths,
weights, everything) so the bot can re-run an image bit for bit. Torch-free. Reading other
tools' images is :mod:`engine.recipe.readers`' job.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "atelier_recipe"


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
