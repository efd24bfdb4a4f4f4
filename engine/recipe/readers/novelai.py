"""NovelAI: the ``Comment`` JSON chunk (``prompt``, ``uc`` for the negative, ``scale``...),
with ``Software: NovelAI`` and the model in ``Source``; V4 puts the prompts in
``v4_prompt.caption.base_caption``. NovelAI's own models cannot run elsewhere, so the model
is only named; and its ``{…}`` emphasis is 1.05x where A1111's ``(…)`` is 1.1x.

Images from NovelAI's first image generator (2022, before V3) carry no ``prompt``, ``width``
or ``height`` in ``Comment``: the prompt is the ``Description`` chunk and the size is the
image's own (``{"steps", "sampler", "seed", "strength", "noise", "scale", "uc"}`` beside
``Title: AI generated image``, ``Source: Stable Diffusion 1D44365E``). That is how
AUTOMATIC1111 reads them (``modules/images.py``, ``read_info_from_image``: the prompt from
``items["Description"]``, ``Size: {image.width}x{image.height}``)."""

from __future__ import annotations

from typing import Any

from engine.recipe.model import Recipe
from engine.recipe.readers import samplers
from engine.recipe.readers.found import FoundRecipe, as_float, as_int, as_text, load_json, resource


def _caption(value: Any) -> str:
    if isinstance(value, dict):
        caption = value.get("caption")
        if isinstance(caption, dict):
            return as_text(caption.get("base_caption"))
    return ""


def read_comment(
    data: dict[str, Any], source: str, model_name: str = "", *, description: str = "", size: tuple[int, int] = (0, 0)
) -> FoundRecipe | None:
    """``description`` and ``size`` stand in for what old images leave out of ``Comment``."""
    if not ("uc" in data or "v4_prompt" in data or ("scale" in data and "prompt" in data and "n_samples" in data)):
        return None
    prompt = as_text(data.get("prompt")) or _caption(data.get("v4_prompt")) or as_text(description)
    negative = as_text(data.get("uc")) or _caption(data.get("v4_negative_prompt"))
    width, height = as_int(data.get("width")), as_int(data.get("height"))
    if width is None and height is None and size[0] > 0 and size[1] > 0:
        width, height = size
    values: dict[str, Any] = {
        "seed": as_int(data.get("seed")),
        "steps": as_int(data.get("steps")),
        "cfg_scale": as_float(data.get("scale")),
        "width": width,
        "height": height,
    }
    if description and "prompt" not in data and "v4_prompt" not in data:
        # The first generator (SD 1.x based) read CLIP's penultimate layer; AUTOMATIC1111
        # writes these images' settings with "Clip skip: 2" for the same reason.
        values["clip_skip"] = 2
    if isinstance(data.get("sampler"), str):
        values["sampler"] = samplers.from_table(samplers.NOVELAI, data["sampler"], as_text(data.get("noise_schedule")))
    notes = [
        "NovelAI's models only run on NovelAI: pick a model of this server for it.",
        "NovelAI's {…} and […] emphasis is weaker than A1111's (…) and […]; the prompt may need adjusting.",
    ]
    missing = tuple(k for k in ("seed", "steps", "cfg_scale", "sampler", "width") if values.get(k) is None)
    recipe = Recipe(model="", model_name=model_name, prompt=prompt, negative_prompt=negative,
                    **{k: v for k, v in values.items() if v is not None})  # fmt: skip
    resources = (resource("model", model_name),) if model_name else ()
    return FoundRecipe("NovelAI", source, recipe, resources, missing, tuple(notes))


def read_chunks(texts: dict[str, str], size: tuple[int, int] = (0, 0)) -> FoundRecipe | None:
    data = load_json(texts.get("Comment", ""))
    if not isinstance(data, dict):
        return None
    source_text = as_text(texts.get("Source"))
    # "NovelAI Diffusion V3 4BB0ED1D": the trailing code is NovelAI's own, not a file hash.
    model = source_text.rsplit(" ", 1)[0] if source_text.count(" ") >= 1 else source_text
    description = as_text(texts.get("Description"))
    old = description and "prompt" not in data and "v4_prompt" not in data
    source = "PNG text chunks 'Description' and 'Comment' (NovelAI)" if old else "PNG text chunk 'Comment' (NovelAI)"
    return read_comment(data, source, model, description=description, size=size)
