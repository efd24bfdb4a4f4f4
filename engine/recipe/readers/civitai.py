"""Civitai's generator: ``civitaiResources`` (version ids) and its ``Hashes`` object.

Civitai writes A1111-style text with two extra settings, ``Civitai resources: [{"type":
"lora", "weight": 0.8, "modelVersionId": 135931, "modelName": ...}, ...]`` and ``Hashes:
{"model": "<AutoV2>", "lora:<name>": "<AutoV2>"}``, both as unquoted JSON; its image pages
carry the same as a JSON meta object with ``civitaiResources``. A version id matches a
registry entry whose source is that Civitai version (an AIR ``…@<version>`` or a URL with
``modelVersionId``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.recipe.model import LoraRef, Recipe
from engine.recipe.readers.found import (
    FoundRecipe,
    Resource,
    as_float,
    as_int,
    as_text,
    load_json,
    resource,
)

_TYPES = {"checkpoint": "model", "model": "model", "lora": "lora", "locon": "lora", "lycoris": "lora", "dora": "lora", "embed": "embedding", "embedding": "embedding", "textualinversion": "embedding", "vae": "vae"}
MAX_RESOURCES = 100


def resources_from(value: Any) -> list[Resource]:
    """Civitai's resource list (JSON text or already parsed) as Resources."""
    items = load_json(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        return []
    found = []
    for item in items[:MAX_RESOURCES]:
        if not isinstance(item, dict):
            continue
        kind = _TYPES.get(as_text(item.get("type")).lower().replace(" ", ""))
        if kind is None:
            continue
        name = as_text(item.get("modelName")) or as_text(item.get("name"))
        version = as_text(item.get("modelVersionName"))
        label = f"{name} ({version})" if name and version and kind != "lora" else name
        found.append(
            resource(kind, label, as_float(item.get("weight") if "weight" in item else item.get("strength")) if kind == "lora" else None,  # type: ignore[arg-type]
                     as_text(item.get("hash")), version=item.get("modelVersionId"))
        )
    return found


def hashes_from(value: Any) -> dict[str, str]:
    """Civitai's ``Hashes`` object: {"model": h, "lora:name": h, "embed:name": h}."""
    data = load_json(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        return {}
    return {str(k)[:200]: v for k, v in list(data.items())[:MAX_RESOURCES] if isinstance(v, str)}


def with_tag_loras(found: FoundRecipe) -> FoundRecipe:
    """Make the recipe's LoRA list agree with the resources (for readers that build both)."""
    loras = [r for r in found.resources if r.kind == "lora"]
    return dataclasses.replace(found, recipe=dataclasses.replace(found.recipe, loras=lora_refs(loras)))


def read_meta(data: dict[str, Any], source: str) -> FoundRecipe | None:
    """Civitai's JSON image meta (``prompt``, ``negativePrompt``, ``civitaiResources``...)."""
    if "civitaiResources" not in data and "cfgScale" not in data:
        return None
    resources = resources_from(data.get("civitaiResources"))
    prompt = as_text(data.get("prompt"))
    width = height = None
    size = as_text(data.get("Size"))
    if "x" in size:
        width, height = (as_int(p) for p in size.split("x", 1))
    values: dict[str, Any] = {
        "steps": as_int(data.get("steps")),
        "cfg_scale": as_float(data.get("cfgScale")),
        "seed": as_int(data.get("seed")),
        "width": width,
        "height": height,
        "sampler": as_text(data.get("sampler")) or None,
        "clip_skip": as_int(data.get("clipSkip")),
    }
    missing = tuple(k for k, v in values.items() if v is None and k not in ("clip_skip", "height"))
    recipe = Recipe(
        model="",
        model_name=as_text(data.get("Model")),
        prompt=prompt,
        negative_prompt=as_text(data.get("negativePrompt")),
        **{k: v for k, v in values.items() if v is not None},
    )
    found = with_tag_loras(FoundRecipe("Civitai", source, recipe, tuple(resources), missing))
    return found


def merge_loras(tag_loras: list[Resource], civitai: list[Resource]) -> list[Resource]:
    """LoRAs from ``<lora:>`` tags enriched with Civitai's version ids where the names agree;
    Civitai's own LoRA list is used when the prompt has no tags (its generator writes none)."""
    loras = [r for r in civitai if r.kind == "lora"]
    if not tag_loras:
        return loras
    by_name = {r.name.casefold(): r for r in loras if r.name}
    merged = []
    for tag in tag_loras:
        match = by_name.get(tag.name.casefold())
        if match is not None:
            tag = Resource(tag.kind, tag.name, tag.weight, tag.hashes + match.hashes, match.civitai_version)
        merged.append(tag)
    return merged


def lora_refs(resources: list[Resource]) -> tuple[LoraRef, ...]:
    return tuple(LoraRef("", r.weight if r.weight is not None else 1.0, name=r.label) for r in resources if r.kind == "lora")
