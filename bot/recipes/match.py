"""Matching a recipe to this server's registry: an imported image's resources, or a saved
recipe whose LoRA has since been removed or disabled.

Models, LoRAs and embeddings are matched by hash first (a file's sha256 or its AutoV2
prefix; the tensor hash A1111, SwarmUI and Civitai's AutoV3 use), then by Civitai version
(a LoRA registered with that version as its source), then by name or file name. What cannot
be matched is said plainly, each with what to do; the rest becomes the stack of the Remix
form. Nothing here runs anything: the result goes through :func:`bot.request.validation.validate`
like any request.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from bot.registry import Catalog, Registry
from bot.registry.text import name_key
from engine.protocol import LoraRef, Recipe, architecture_label
from engine.recipe.readers import FoundRecipe, Resource


@dataclass
class Matched:
    """A recipe in this server's terms, with what could not be carried over."""

    recipe: Recipe
    #: Each LoRA or model matched, and how: "hash", "Civitai version", "name".
    how: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def _find(registry: Registry, catalog: Catalog, guild_id: int, res: Resource) -> tuple[str | None, str]:
    table = {"model": "models", "embedding": "embeddings"}.get(res.kind, "loras")
    for digest in res.hashes:
        name = await registry.book.find_by_hash(guild_id, table, digest)
        if name is not None:
            return name, "hash"
    if res.kind == "lora" and res.civitai_version is not None:
        name = await registry.book.find_lora_by_civitai_version(guild_id, res.civitai_version)
        if name is not None:
            return name, "Civitai version"
    if res.name:
        if res.kind == "embedding":
            found = catalog.embeddings.get(name_key(res.name))
            return (found.name, "name") if found is not None else (None, "")
        entry = catalog.model(res.name) if res.kind == "model" else catalog.lora(res.name)
        if entry is not None:
            return entry.name, "name"
        name = await registry.book.find_by_file_stem(guild_id, table, res.name)
        if name is not None:
            return name, "file name"
    return None, ""


def _hash_words(res: Resource) -> str:
    if res.hashes:
        return f" (hash `{res.hashes[0][:12]}`)"
    if res.civitai_version is not None:
        return f" (Civitai version {res.civitai_version})"
    return ""


async def match_found(registry: Registry, catalog: Catalog, guild_id: int, found: FoundRecipe) -> Matched:
    """``found`` (read from an image) in this server's terms."""
    recipe = found.recipe
    how: list[str] = []
    problems: list[str] = []
    model_entry = None
    model_res = found.model
    if found.exact and recipe.model_name:
        model_res = Resource("model", recipe.model_name, hashes=(recipe.model_hash,) if recipe.model_hash else ())
    if model_res is not None:
        name, by = await _find(registry, catalog, guild_id, model_res)
        if name is not None:
            model_entry = catalog.model(name)
            how.append(f"model `{name}` (by {by})")
        else:
            problems.append(
                f"The model `{model_res.label}`{_hash_words(model_res)} is not in this server: the server's "
                "default model is used instead. Pick another in the form, or ask an admin to add it with `/model add`."
            )
    if model_entry is None:
        default = catalog.settings.default_model
        model_entry = catalog.model(default) if default else None
        if model_res is None:
            problems.append("The image does not say which model made it: the server's default model is used.")
    loras: list[LoraRef] = []
    lora_resources = found.of_kind("lora")
    if found.exact:
        lora_resources = [Resource("lora", lo.display_name, lo.weight, tuple(h for h in (lo.sha256, lo.a1111_hash) if h)) for lo in recipe.loras]
    for res in lora_resources:
        name, by = await _find(registry, catalog, guild_id, res)
        entry = catalog.lora(name) if name else None
        if entry is None:
            suggestions = catalog.suggest_loras(res.name, architecture=model_entry.architecture if model_entry else None) if res.name else []
            tip = f" Similar here: {', '.join(f'`{s}`' for s in suggestions)}." if suggestions else ""
            problems.append(
                f"The LoRA `{res.label}`{_hash_words(res)} is not in this server, so it was left out.{tip} "
                "Ask an admin to add it with `/lora add`."
            )
            continue
        how.append(f"LoRA `{entry.name}` (by {by})")
        loras.append(LoraRef(entry.file, res.weight if res.weight is not None else entry.default_weight, entry.name))
    prompt, negative = recipe.prompt, recipe.negative_prompt
    for res in found.of_kind("embedding"):
        name, by = await _find(registry, catalog, guild_id, res)
        if name is None:
            problems.append(
                f"The embedding `{res.label}`{_hash_words(res)} is not in this server, so its name stays in the "
                "prompt as plain words. Ask an admin to add it with `/embedding add`."
            )
            continue
        how.append(f"embedding `{name}` (by {by})")
        if res.name and name != res.name:
            # Embeddings are called by name in the prompt: use this server's name for it.
            word = re.compile(rf"(?<![\w-]){re.escape(res.name)}(?![\w-])")
            prompt, negative = word.sub(name, prompt), word.sub(name, negative)
    vae = found.of_kind("vae")
    if vae:
        problems.append(f"The VAE `{vae[0].label}` is not known here: the model's own VAE is used.")
    changes: dict[str, object] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "model": model_entry.file if model_entry else "",
        "model_name": model_entry.name if model_entry else "",
        "model_hash": "",
        "loras": tuple(loras),
        "embeddings": (),
        "vae": "",
        "count": 1,
    }
    if model_entry is not None:
        defaults = {
            "steps": model_entry.default_steps,
            "cfg_scale": model_entry.default_cfg,
            "sampler": model_entry.default_sampler,
            "width": model_entry.default_width,
            "height": model_entry.default_height,
        }
        for key in found.missing:
            if key == "size":
                changes["width"], changes["height"] = defaults["width"], defaults["height"]
            elif key in defaults:
                changes[key] = defaults[key]
    return Matched(dataclasses.replace(recipe, **changes), how, problems, list(found.notes))  # type: ignore[arg-type]


def health(recipe: Recipe, catalog: Catalog) -> list[str]:
    """What a stored recipe names that this server no longer offers, and what to use instead."""
    problems: list[str] = []
    model = catalog.model(recipe.model_label)
    if model is None:
        suggestions = catalog.suggest_models(recipe.model_label)
        tip = f" Try {', '.join(f'`{s}`' for s in suggestions)}." if suggestions else " Pick another with `model:`."
        problems.append(f"The model `{recipe.model_label}` is no longer in this server.{tip}")
    elif not model.enabled:
        problems.append(f"The model `{model.name}` is disabled here. Pick another with `model:`.")
    architecture = model.architecture if model else None
    for lora in recipe.loras:
        entry = catalog.lora(lora.display_name)
        if entry is not None and entry.enabled:
            continue
        suggestions = [s for s in catalog.suggest_loras(lora.display_name, architecture=architecture) if s != lora.display_name]
        tip = f" Use {', '.join(f'`{s}`' for s in suggestions)} instead." if suggestions else " Remove it from the stack."
        state = "was removed from this server" if entry is None else "is disabled here"
        where = f" for {architecture_label(architecture)}" if architecture and suggestions else ""
        problems.append(f"The LoRA `{lora.display_name}` {state}.{tip.replace(' instead', where + ' instead') if where else tip}")
    return problems


def usable(recipe: Recipe, catalog: Catalog) -> Recipe:
    """``recipe`` without the LoRAs this server no longer offers (so the rest can still run)."""
    keep = tuple(lo for lo in recipe.loras if (e := catalog.lora(lo.display_name)) is not None and e.enabled)
    return dataclasses.replace(recipe, loras=keep)
