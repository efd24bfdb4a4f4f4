"""Which recipes can share one pipeline call: one rule for the bot's scheduler and the engine.

The engine's queue (:mod:`engine.jobs`) joins queued jobs with equal keys into one batched
call, and :meth:`engine.generate.Generator.run_batch` refuses a batch whose keys differ; the
bot's scheduler (:mod:`bot.jobs.scheduler`) hands such jobs to an engine together. Both use
this function, so the bot never groups jobs the engine would then run apart. Plain Python,
no torch: the bot process imports this module.
"""

from __future__ import annotations

from typing import Any

from engine.recipe.model import Recipe


def batch_key(recipe: Recipe) -> tuple[Any, ...]:
    """What jobs must share to run in one pipeline call (prompts and seeds may differ).

    The LoRA stack is compared in order, with its weights and expected sha256s as given: the
    engine patches the stack as written. clip skip and embeddings are read with defaults so
    the key stays right for recipes of an engine that has those fields and one that does not
    yet.

    Nothing per architecture is added: the model file is in the key, so jobs that share it
    share the architecture and its variant, and every setting an architecture reads (FLUX's
    distilled guidance is ``cfg_scale``) is a recipe field already here. An architecture whose
    recipes carry more says so in ``Architecture.batch_fields`` (:mod:`engine.arch`), which
    :func:`architecture_batch_key` appends.
    """
    return (
        recipe.model, recipe.vae, tuple((lo.file, float(lo.weight), lo.sha256) for lo in recipe.loras),
        recipe.width, recipe.height, recipe.steps, recipe.sampler, float(recipe.cfg_scale),
        getattr(recipe, "clip_skip", 1), tuple(getattr(recipe, "embeddings", ())),
        getattr(recipe, "prediction_type", ""), getattr(recipe, "eta", None), getattr(recipe, "shift", None),
        # Image-to-image and the upscale pass: one input, strength and second pass per call.
        getattr(recipe, "init_image", ""), float(getattr(recipe, "strength", 0.75)),
        getattr(recipe, "resize_mode", ""), float(getattr(recipe, "hires_scale", 0.0)),
        getattr(recipe, "hires_steps", 0), float(getattr(recipe, "hires_strength", 0.4)),
        # An edit's further pictures: one set per call, in order.
        tuple(getattr(recipe, "references", ())),
    )  # fmt: skip


def architecture_batch_key(recipe: Recipe, architecture: str) -> tuple[Any, ...]:
    """:func:`batch_key` plus what ``architecture``'s module says its jobs must also share,
    for a caller that knows the model's architecture (the engine, once the header is read)."""
    from engine.arch import get

    spec = get(architecture)
    extra = spec.batch_fields(recipe) if spec is not None and spec.batch_fields is not None else ()
    return (*batch_key(recipe), *extra)


__all__ = ["architecture_batch_key", "batch_key"]
