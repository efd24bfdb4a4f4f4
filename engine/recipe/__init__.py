"""The recipe model and its forms, shared by the bot and the engine (torch-free).

- :mod:`engine.recipe.model`: :class:`Recipe`, :class:`LoraRef`, :class:`EmbeddingRef` and
  the JSON form (``to_json``/``from_json``), which is also what the engine's API carries.
- :mod:`engine.recipe.a1111`: the one writer and reader of AUTOMATIC1111's ``parameters`` text.
- :mod:`engine.recipe.share_code`: a compact code to paste (``/imagine recipe:<code>``).
- :mod:`engine.recipe.readers`: what other tools' images say (A1111/Forge, ComfyUI,
  InvokeAI, NovelAI, SwarmUI, Fooocus, Civitai), one module per tool family.

:mod:`engine.protocol` re-exports the model, so ``from engine.protocol import Recipe`` keeps
working everywhere.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from engine.recipe.model import EmbeddingRef, LoraRef, Recipe, RecipeError, file_stem


def atelier_version() -> str:
    try:
        return _metadata.version("atelier")
    except _metadata.PackageNotFoundError:
        return "0.1.0"


__all__ = ["EmbeddingRef", "LoraRef", "Recipe", "RecipeError", "atelier_version", "file_stem"]
