"""Fooocus: its JSON scheme in ``parameters`` (PNG, with ``fooocus_scheme: fooocus``) or
UserComment (JPEG). LoRAs come as ``loras: [[name, weight, hash], ...]`` (hash = AutoV2) or,
in older versions, ``lora_combined_N: "name : weight"``. ``full_prompt`` is the prompt after
Fooocus applied its styles and expansion, i.e. what the model was really given."""

from __future__ import annotations

import re
from typing import Any

from engine.recipe.model import Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.a1111 import with_tag_loras
from engine.recipe.readers.found import FoundRecipe, as_float, as_int, as_text, resource

_RESOLUTION = re.compile(r"\(?\s*'?(\d+)'?\s*[,x×*]\s*'?(\d+)'?\s*\)?")


def read(data: dict[str, Any], source: str, *, scheme: str | None = None) -> FoundRecipe | None:
    if scheme != "fooocus" and not ("base_model" in data and ("guidance_scale" in data or "full_prompt" in data)):
        return None
    loras = []
    if isinstance(data.get("loras"), list):
        for item in data["loras"][:100]:
            if isinstance(item, list) and item:
                weight = as_float(item[1]) if len(item) > 1 else None
                loras.append(resource("lora", item[0], 1.0 if weight is None else weight, item[2] if len(item) > 2 else None))
    else:
        for key in sorted(k for k in data if str(k).startswith("lora_combined_"))[:100]:
            name, _, weight = as_text(data[key]).rpartition(" : ")
            if name and name != "None":
                loras.append(resource("lora", name, as_float(weight) or 1.0))
    full = data.get("full_prompt")
    styled = ", ".join(p for p in full[:50] if isinstance(p, str)) if isinstance(full, list) else ""
    prompt = styled or as_text(data.get("prompt"))
    full_negative = data.get("full_negative_prompt")
    negative = (", ".join(p for p in full_negative[:50] if isinstance(p, str)) if isinstance(full_negative, list) else "") or as_text(data.get("negative_prompt"))
    values: dict[str, Any] = {
        "seed": as_int(data.get("seed")),
        "steps": as_int(data.get("steps")),
        "cfg_scale": as_float(data.get("guidance_scale")),
        "clip_skip": as_int(data.get("clip_skip")),
    }
    match = _RESOLUTION.fullmatch(as_text(data.get("resolution")).strip())
    if match:
        values["width"], values["height"] = int(match[1]), int(match[2])
    if isinstance(data.get("sampler"), str):
        values["sampler"] = samplers.from_comfy(data["sampler"], as_text(data.get("scheduler")))
    notes = []
    if styled and styled != as_text(data.get("prompt")):
        notes.append("The prompt is the one Fooocus really used, with its styles and prompt expansion applied.")
    if as_text(data.get("refiner_model")) not in ("", "None"):
        notes.append("Not carried over: the refiner model.")
    if data.get("sharpness") not in (None, "2", 2, 2.0):
        notes.append("Not carried over: Fooocus's sharpness setting.")
    model = resource("model", data.get("base_model"), None, data.get("base_model_hash"))
    vae_name = as_text(data.get("vae"))
    vae = resource("vae", vae_name) if vae_name and vae_name not in ("None", "Default (model)") else None
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    recipe = Recipe(
        model="", model_name=model.name, prompt=prompt, negative_prompt=negative, vae=vae.name if vae else "",
        **{k: v for k, v in values.items() if v is not None},
    )  # fmt: skip
    resources = ([model] if model.name else []) + loras + ([vae] if vae else [])
    return with_tag_loras(FoundRecipe("Fooocus", source, recipe, tuple(resources), missing, tuple(notes)))
