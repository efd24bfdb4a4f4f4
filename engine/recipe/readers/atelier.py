"""Our own ``atelier_recipe`` chunk: the exact recipe, files and hashes included."""

from __future__ import annotations

from engine.recipe.model import Recipe, RecipeError
from engine.recipe.readers.found import FoundRecipe, load_json, resource

KEY = "atelier_recipe"


def read(text: str, parameters: str | None) -> FoundRecipe | None:
    data = load_json(text)
    if not isinstance(data, dict):
        return None
    try:
        recipe = Recipe.from_json(data)
    except (RecipeError, TypeError, ValueError):
        return None
    resources = [resource("model", recipe.model_label, None, recipe.model_hash)]
    resources += [resource("lora", lo.display_name, lo.weight, lo.sha256, lo.a1111_hash) for lo in recipe.loras]
    resources += [resource("embedding", e.name, None, e.sha256) for e in recipe.embeddings]
    return FoundRecipe("Atelier", "PNG text chunk 'atelier_recipe'", recipe, tuple(resources), exact=True)
