"""InvokeAI: the ``invokeai_metadata`` JSON chunk (3.x and 4.x+), and 2.x's ``sd-metadata``.

4.x names models as ``{"name", "hash", "base", "key"}`` with ``hash`` like ``"blake3:…"``
(its default) or ``"sha256:…"``; 3.x as ``{"model_name", "base_model"}``; LoRAs are
``[{"model" | "lora": {...}, "weight": w}]``. InvokeAI's ``clip_skip`` counts layers skipped
(0 = none), A1111's counts from the end (1 = none).
"""

from __future__ import annotations

from typing import Any

from engine.recipe.model import Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.a1111 import with_tag_loras
from engine.recipe.readers.found import (
    FoundRecipe,
    Resource,
    as_float,
    as_int,
    as_text,
    load_json,
    resource,
)


def _model(kind: str, data: Any, weight: float | None = None) -> Resource | None:
    if not isinstance(data, dict):
        return None
    name = as_text(data.get("name")) or as_text(data.get("model_name"))
    digest = as_text(data.get("hash"))
    sha = digest if digest.lower().startswith("sha256:") else ""
    foreign = digest if digest and not sha else None
    return resource(kind, name, weight, sha, foreign=foreign)  # type: ignore[arg-type]


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # 2.x: [{"prompt": "...", "weight": 1}]
        return " ".join(as_text(p.get("prompt")) for p in value[:50] if isinstance(p, dict))
    return ""


def read_metadata(data: dict[str, Any], source: str) -> FoundRecipe | None:
    if not ("positive_prompt" in data or "model" in data or "generation_mode" in data):
        return None
    notes: list[str] = []
    model = _model("model", data.get("model"))
    loras: list[Resource] = []
    for item in (data.get("loras") or [])[:100] if isinstance(data.get("loras"), list) else []:
        if isinstance(item, dict):
            lora = _model("lora", item.get("model") or item.get("lora"), as_float(item.get("weight")))
            if lora is not None:
                loras.append(lora)
    hashed = [r for r in ([model] if model else []) + loras if r.foreign_hash]
    if hashed:
        notes.append(
            "InvokeAI identified the models by a BLAKE3 hash, which this server does not record; they were matched by name."
        )
    clip_skip = as_int(data.get("clip_skip"))
    values: dict[str, Any] = {
        "seed": as_int(data.get("seed")),
        "steps": as_int(data.get("steps")),
        "cfg_scale": as_float(data.get("cfg_scale")),
        "width": as_int(data.get("width")),
        "height": as_int(data.get("height")),
    }
    if isinstance(data.get("scheduler"), str):
        values["sampler"] = samplers.from_table(samplers.INVOKEAI, data["scheduler"])
    if clip_skip is not None and clip_skip >= 0:
        values["clip_skip"] = clip_skip + 1
    vae = _model("vae", data.get("vae"))
    mode = as_text(data.get("generation_mode"))
    if mode and "txt2img" not in mode:
        notes.append(f"It was made with InvokeAI's {mode} mode; only the prompt and settings carry over.")
    if data.get("controlnets") or data.get("ipAdapters") or data.get("t2iAdapters"):
        notes.append("Not carried over: control adapters (ControlNet, IP-Adapter, T2I-Adapter).")
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    recipe = Recipe(
        model="",
        model_name=model.name if model else "",
        prompt=_prompt_text(data.get("positive_prompt")),
        negative_prompt=_prompt_text(data.get("negative_prompt")),
        vae=vae.name if vae else "",
        **{k: v for k, v in values.items() if v is not None},
    )
    resources = ([model] if model else []) + loras + ([vae] if vae and vae.name else [])
    return with_tag_loras(FoundRecipe("InvokeAI", source, recipe, tuple(resources), missing, tuple(notes)))


def _legacy(data: dict[str, Any], source: str) -> FoundRecipe | None:
    """InvokeAI 2.x ``sd-metadata``: ``{"model_weights": ..., "image": {...}}``."""
    image = data.get("image")
    if not isinstance(image, dict):
        return None
    flat = {
        "positive_prompt": _prompt_text(image.get("prompt")),
        "model": {"name": as_text(data.get("model_weights"))},
        "seed": image.get("seed"),
        "steps": image.get("steps"),
        "cfg_scale": image.get("cfg_scale"),
        "width": image.get("width"),
        "height": image.get("height"),
        "scheduler": {"k_euler_a": "euler_a", "k_euler": "euler", "k_heun": "heun", "k_lms": "lms", "ddim": "ddim"}.get(as_text(image.get("sampler")), as_text(image.get("sampler"))),
    }
    return read_metadata(flat, source)


def read_chunks(texts: dict[str, str]) -> FoundRecipe | None:
    if "invokeai_metadata" in texts:
        data = load_json(texts["invokeai_metadata"])
        if isinstance(data, dict):
            return read_metadata(data, "PNG text chunk 'invokeai_metadata'")
    data = load_json(texts.get("sd-metadata", ""))
    if isinstance(data, dict):
        return _legacy(data, "PNG text chunk 'sd-metadata'")
    return None
