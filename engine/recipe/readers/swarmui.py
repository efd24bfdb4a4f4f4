"""SwarmUI: a JSON object in ``parameters`` (PNG) or UserComment (JPEG) holding
``sui_image_params`` (``prompt``, ``negativeprompt``, ``model``, ``loras`` + ``loraweights``,
``cfgscale``, ``clipstopatlayer``...) and optionally ``sui_models`` with each file's tensor
hash (``0x`` + sha256 of the data after the safetensors header). Values may be strings
("1.0") and lists may be comma-separated strings, as its documentation warns."""

from __future__ import annotations

from typing import Any

from engine.recipe.a1111 import take_lora_tags
from engine.recipe.model import Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.a1111 import with_tag_loras
from engine.recipe.readers.found import FoundRecipe, as_float, as_int, as_text, file_stem, resource


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value[:100]
    if isinstance(value, str) and value.strip():
        return [part.strip() for part in value.split(",")][:100]
    return []


def read(data: dict[str, Any], source: str) -> FoundRecipe | None:
    params = data.get("sui_image_params")
    if not isinstance(params, dict):
        return None
    hashes: dict[tuple[str, str], str] = {}
    for item in _list(data.get("sui_models")):
        if isinstance(item, dict):
            param = as_text(item.get("param")).lower()
            param = "lora" if "lora" in param else param
            hashes[(param, file_stem(as_text(item.get("name"))).casefold())] = as_text(item.get("hash"))

    def hash_of(param: str, name: str) -> str:
        return hashes.get((param, file_stem(name).casefold()), "")

    model_name = as_text(params.get("model"))
    model = resource("model", model_name, None, hash_of("model", model_name)) if model_name else None
    names, weights = _list(params.get("loras")), _list(params.get("loraweights"))
    loras = []
    for index, name in enumerate(names):
        if isinstance(name, str) and name:
            weight = as_float(weights[index]) if index < len(weights) else None
            loras.append(resource("lora", name, 1.0 if weight is None else weight, hash_of("lora", name)))
    prompt, tags = take_lora_tags(as_text(params.get("prompt")))
    loras += [resource("lora", n, w if w is not None else 1.0) for n, w in tags if n]
    values: dict[str, Any] = {
        "seed": as_int(params.get("seed")),
        "steps": as_int(params.get("steps")),
        "cfg_scale": as_float(params.get("cfgscale")),
        "width": as_int(params.get("width")),
        "height": as_int(params.get("height")),
    }
    if isinstance(params.get("sampler"), str):
        values["sampler"] = samplers.from_comfy(params["sampler"], as_text(params.get("scheduler")))
    layer = as_int(params.get("clipstopatlayer"))
    if layer is not None and layer < -1:
        values["clip_skip"] = -layer
    vae_name = as_text(params.get("vae"))
    vae = resource("vae", vae_name, None, hash_of("vae", vae_name)) if vae_name and vae_name.lower() not in ("none", "automatic") else None
    notes = []
    for key, words in (("refinermodel", "a refiner model"), ("initimage", "a source image"), ("controlnetmodel", "ControlNet")):
        if params.get(key):
            notes.append(f"Not carried over: {words}.")
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    if model is None:
        missing += ("model",)
    recipe = Recipe(
        model="", model_name=model.name if model else "", prompt=prompt,
        negative_prompt=as_text(params.get("negativeprompt")), vae=vae.name if vae else "",
        **{k: v for k, v in values.items() if v is not None},
    )  # fmt: skip
    resources = ([model] if model else []) + loras + ([vae] if vae else [])
    return with_tag_loras(FoundRecipe("SwarmUI", source, recipe, tuple(resources), missing, tuple(notes)))
