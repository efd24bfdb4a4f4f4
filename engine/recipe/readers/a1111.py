"""AUTOMATIC1111 and Forge: the ``parameters`` text (also Civitai's and Fooocus's A1111 scheme)."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.recipe.a1111 import alias, parse_hash_list, read_parameters
from engine.recipe.readers import civitai
from engine.recipe.readers.civitai import (
    with_tag_loras as with_tag_loras,  # the other readers import it here
)
from engine.recipe.readers.found import FoundRecipe, Resource, as_float, resource

#: Settings that change the image but have no place in a recipe here, in people's words.
_UNSUPPORTED = {
    "ADetailer model": "ADetailer (face and hand fixing)",
    "ControlNet 0": "ControlNet",
    "Refiner": "an SDXL refiner model",
    "Variation seed": "a variation seed",
    "Face restoration": "face restoration",
    "RNG": "a different noise source (RNG)",
    "CFG Rescale": "CFG rescale",
    "Styles": "saved styles",
    "CFG scale": "a CFG above 1 beside FLUX's distilled guidance (Forge's extra unconditioned pass)",
}


def _notes(extras: dict[str, str]) -> list[str]:
    seen: list[str] = []
    for key in extras:
        for prefix, words in _UNSUPPORTED.items():
            if key.startswith(prefix.split(" ")[0]) and key.startswith(prefix) and words not in seen:
                seen.append(words)
    return [f"Not carried over: {words}." for words in seen]


def read(text: str, source: str, *, format_name: str | None = None) -> FoundRecipe | None:
    """A ``parameters`` text; None when it has neither a settings line nor a prompt."""
    read_ = read_parameters(text)
    recipe, extras = read_.recipe, read_.extras
    if not extras and len(read_.missing) >= 5 and not recipe.loras:
        return None  # no settings line: some other text, not generation parameters
    version = extras.get("Version", "") or ""
    name = format_name or ("Forge" if version.startswith("f") else "Civitai" if "Civitai resources" in extras else "AUTOMATIC1111")
    if "Fooocus" in version:
        name = "Fooocus (A1111 scheme)"
    civitai_hashes = civitai.hashes_from(extras.get("Hashes"))
    civitai_resources = civitai.resources_from(extras.get("Civitai resources"))
    tag_loras = [
        resource("lora", lo.name, lo.weight, lo.a1111_hash, civitai_hashes.get(f"lora:{lo.name}"))
        for lo in recipe.loras
    ]
    if not tag_loras and extras.get("Lora weights"):
        # Fooocus's A1111 scheme names LoRAs in "Lora weights" and "Lora hashes" (AutoV2).
        hashes = parse_hash_list(extras.get("Lora hashes", ""))
        for lora_name, weight in parse_hash_list(extras["Lora weights"]).items():
            tag_loras.append(resource("lora", lora_name, as_float(weight), hashes.get(alias(lora_name, ":,"))))
    loras = civitai.merge_loras(tag_loras, civitai_resources)
    models = [r for r in civitai_resources if r.kind == "model"]
    model = resource("model", recipe.model_name, None, recipe.model_hash, civitai_hashes.get("model"))
    if models:
        model = Resource("model", model.name or models[0].name, None, model.hashes + models[0].hashes, models[0].civitai_version)
    resources: list[Resource] = []
    if model.name or model.hashes or model.civitai_version is not None:
        resources.append(model)
    resources += loras
    resources += [resource("embedding", e.name, None, e.sha256) for e in recipe.embeddings]
    resources += [r for r in civitai_resources if r.kind == "embedding" and all(r.name != e.name for e in recipe.embeddings)]
    if recipe.vae:
        resources.append(resource("vae", recipe.vae, None, extras.get("VAE hash")))
    notes = _notes(extras)
    if recipe.hires_scale and recipe.hires_upscaler.lower() != "lanczos":
        # The upscale pass here upscales the image with Lanczos before its second pass.
        notes.append(f"Hires upscaler {recipe.hires_upscaler} is not available here: Lanczos is used.")
        recipe = dataclasses.replace(recipe, hires_upscaler="Lanczos")
    if recipe.strength != type(recipe).strength and not recipe.init_image:
        notes.append("Made from an input image (img2img) that is not in the file: attach it to `/imagine` "
                     "with this strength to run it the same way.")
    if read_.references:
        count = len(read_.references)
        notes.append(f"Made with {count} more reference picture{'s' if count > 1 else ''} beside the input image, "
                     "not in the file: attach them again to run it the same way.")  # fmt: skip
    if read_.default_weights:
        notes.append("LoRAs whose weight is not a number take their default weight: " + ", ".join(read_.default_weights) + ".")
    if name == "Civitai" and "FLUX" in text.rstrip().rsplit("\n", 1)[-1]:
        # Civitai's FLUX text, read as Forge reads it (infotext_utils.parse_generation_parameters):
        # its CFG scale is the distilled guidance (what a recipe's cfg_scale is on FLUX), its
        # Clip skip means nothing on FLUX, and "Sampler: Undefined" is FLUX's Euler.
        values: dict[str, Any] = {"architecture": "flux", "clip_skip": 1}
        if recipe.sampler == "Undefined":
            values["sampler"] = "Euler"
        recipe = dataclasses.replace(recipe, **values)
    found = FoundRecipe(name, source, recipe, tuple(resources), read_.missing, tuple(notes))
    return with_tag_loras(found)
