"""What a recipe may ask for: checked once, the same way, before it queues and before it runs.

Both the job queue (so a bad request is refused at submit, before it waits in line) and the
generator (which can also be called directly) use these rules; the values arrive from JSON,
so types are checked too, not just ranges. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine import arch as _arch
from engine.protocol import PREDICTION_TYPES, EngineError, ErrorCode, Recipe
from engine.recipe.model import MAX_SHIFT
from engine.samplers import get_sampler

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _whole(value: object) -> bool:
    """JSON ``true`` is a Python int too; a count of ``true`` is a mistake, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RecipeLimits:
    """Bounds that keep one request from monopolising or exhausting the engine."""

    max_prompt_chars: int = 10_000
    max_steps: int = 150
    max_count: int = 8
    max_side: int = 2048
    min_side: int = 64
    max_loras: int = 16
    max_cfg: float = 30.0
    max_embeddings: int = 32
    #: CLIP text encoders have 12 (SD 1.5, SDXL's first) to 32 layers.
    max_clip_skip: int = 12


DEFAULT_LIMITS = RecipeLimits()


def validate_recipe(recipe: Recipe, limits: RecipeLimits = DEFAULT_LIMITS) -> None:
    """Refuse a recipe that cannot run before it takes a place in the queue."""

    def refuse(message: str) -> None:
        raise EngineError(ErrorCode.INVALID_RECIPE, message)

    if not isinstance(recipe.model, str) or not recipe.model:
        refuse("the recipe names no model")
    if not isinstance(recipe.model_name, str):
        refuse("model_name must be text")
    if not isinstance(recipe.vae, str):
        refuse("vae must be a file name relative to the model folder (or empty)")
    for name, text in (("prompt", recipe.prompt), ("negative prompt", recipe.negative_prompt)):
        if not isinstance(text, str):
            refuse(f"the {name} must be text")
        if len(text) > limits.max_prompt_chars:
            refuse(f"the {name} has {len(text)} characters; the limit is {limits.max_prompt_chars}")
    if not _whole(recipe.steps) or not 1 <= recipe.steps <= limits.max_steps:
        refuse(f"steps must be a whole number from 1 to {limits.max_steps}")
    if not _whole(recipe.count) or not 1 <= recipe.count <= limits.max_count:
        refuse(f"count must be from 1 to {limits.max_count}")
    for side_name, side in (("width", recipe.width), ("height", recipe.height)):
        if not _whole(side) or not limits.min_side <= side <= limits.max_side:
            refuse(f"{side_name} must be from {limits.min_side} to {limits.max_side} pixels")
        if side % 8:
            refuse(f"{side_name} must be a multiple of 8 (got {side})")
    if not _number(recipe.cfg_scale) or not 0 <= recipe.cfg_scale <= limits.max_cfg:
        refuse(f"cfg_scale must be from 0 to {limits.max_cfg}")
    if not _whole(recipe.seed) or not 0 <= recipe.seed <= 2**63 - 1 - limits.max_count:
        refuse(f"seed must be a whole number from 0 to 2^63-{limits.max_count + 1}")
    if not isinstance(recipe.sampler, str):
        refuse("the sampler must be a name such as 'DPM++ 2M Karras'")
    get_sampler(recipe.sampler)  # an unknown name fails here, listing the known ones
    eta = getattr(recipe, "eta", None)
    if eta is not None and (not _number(eta) or not 0 <= eta <= 1):
        refuse(f"eta must be from 0 to 1 (TCD's gamma, DDIM's eta), or left out; got {eta!r}")
    shift = getattr(recipe, "shift", None)
    if shift is not None and (not _number(shift) or not 0 < shift <= MAX_SHIFT):
        refuse(f"shift must be above 0 and at most {MAX_SHIFT:g} (Qwen-Image-Lightning uses 3), "
               f"or left out for the model's own; got {shift!r}")  # fmt: skip
    if len(recipe.loras) > limits.max_loras:
        refuse(f"at most {limits.max_loras} LoRAs can be stacked (got {len(recipe.loras)})")
    for lora in recipe.loras:
        if not isinstance(lora.file, str) or not lora.file:
            refuse("every LoRA needs a file")
        if not _number(lora.weight) or not -10 <= lora.weight <= 10:
            refuse(f"LoRA '{lora.file}' has weight {lora.weight}; use a value from -10 to 10")
        if not isinstance(lora.name, str):
            refuse(f"LoRA '{lora.file}' has a name that is not text")
        if lora.sha256 is not None and not (
            isinstance(lora.sha256, str) and _SHA256.fullmatch(lora.sha256)
        ):
            refuse(f"LoRA '{lora.file}' sha256 must be 64 hex digits (or left out)")
    if not _whole(recipe.clip_skip) or not 1 <= recipe.clip_skip <= limits.max_clip_skip:
        refuse(f"clip_skip must be a whole number from 1 to {limits.max_clip_skip} (1 = the last layer)")
    if recipe.prediction_type not in PREDICTION_TYPES:
        refuse(f"prediction_type must be one of {', '.join(repr(p) for p in PREDICTION_TYPES)}")
    if len(recipe.embeddings) > limits.max_embeddings:
        refuse(f"at most {limits.max_embeddings} embeddings can be used at once (got {len(recipe.embeddings)})")
    for embedding in recipe.embeddings:
        if not isinstance(embedding.file, str) or not embedding.file:
            refuse("every embedding needs a file")
        if not isinstance(embedding.name, str) or not embedding.name.strip():
            refuse(f"embedding '{embedding.file}' needs the name the prompt calls it by")
        if embedding.sha256 is not None and not (
            isinstance(embedding.sha256, str) and _SHA256.fullmatch(embedding.sha256)
        ):
            refuse(f"embedding '{embedding.file}' sha256 must be 64 hex digits (or left out)")
    _check_picture_fields(recipe, limits, refuse)


def _check_picture_fields(recipe: Recipe, limits: RecipeLimits, refuse: Any) -> None:
    """Image-to-image and the upscale pass (:mod:`engine.recipe.picture`)."""
    from engine.recipe.picture import RESIZE_MODES, hires_size

    init = getattr(recipe, "init_image", "")
    if not isinstance(init, str) or (init and not _SHA256.fullmatch(init)):
        refuse("init_image must be the input image's sha256 (64 hex digits) or empty")
    references = getattr(recipe, "references", ())
    sources = getattr(recipe, "reference_sources", ())
    if not isinstance(references, tuple) or not all(isinstance(r, str) and _SHA256.fullmatch(r) for r in references):
        refuse("references must be the further pictures' sha256s (64 hex digits each)")
    if not isinstance(sources, tuple) or not all(isinstance(s, str) for s in sources) or len(sources) > len(references):
        refuse("reference_sources must be text, at most one link per reference picture")
    if references and not init:
        refuse("reference pictures need an input picture (init_image) first: the first picture is the one "
               "edited, the references only show it what to use")  # fmt: skip
    problem = reference_problem(recipe)
    if problem is not None:
        refuse(problem)
    if not _number(recipe.strength) or not 0 <= recipe.strength <= 1:
        refuse(f"the denoising strength must be from 0 to 1 (got {recipe.strength})")
    if recipe.resize_mode not in RESIZE_MODES:
        refuse(f"resize_mode must be one of {', '.join(RESIZE_MODES)}")
    if not _number(recipe.hires_scale) or not (recipe.hires_scale == 0 or 1 <= recipe.hires_scale <= 4):
        refuse(f"hires_scale must be 0 (no upscale pass) or from 1 to 4 (got {recipe.hires_scale})")
    if not _whole(recipe.hires_steps) or not 0 <= recipe.hires_steps <= limits.max_steps:
        refuse(f"hires_steps must be a whole number from 0 (same as steps) to {limits.max_steps}")
    if not _number(recipe.hires_strength) or not 0 <= recipe.hires_strength <= 1:
        refuse(f"the upscale pass's denoising strength must be from 0 to 1 (got {recipe.hires_strength})")
    if recipe.hires_scale:
        width, height = hires_size(recipe.width, recipe.height, recipe.hires_scale)
        if max(width, height) > limits.max_side:
            refuse(f"the upscaled image would be {width}x{height}; sides may be at most {limits.max_side} "
                   "pixels, so upscale a smaller image or by less")  # fmt: skip


def reference_problem(recipe: Recipe, architecture: str = "") -> str | None:
    """Why ``recipe`` names more pictures than its model takes (the edited one and its
    references: ``Variant.max_images`` of the recipe's variant, 1 where none is known), or
    None. Torch-free, so the bot can ask before a job is queued; ``architecture`` is the
    model file's where known (else the recipe's)."""
    references = getattr(recipe, "references", ())
    if not references:
        return None
    spec = _arch.get(architecture or recipe.architecture)
    found = spec.variant(recipe.variant or None) if spec is not None else None
    most = found.max_images if found is not None else 1
    given = 1 + len(references)
    if given <= most:
        return None
    label = found.label if found is not None else spec.label if spec is not None else ""
    extra = "reference picture" if len(references) == 1 else f"{len(references)} reference pictures"
    does = (found.capabilities if found is not None and found.capabilities is not None
            else spec.capabilities if spec is not None else frozenset())  # fmt: skip
    if "edit" not in does:
        who = f"{label} models take" if label else "a model of unknown architecture takes"
        return (f"{who} one input picture and no reference pictures (only an edit model reads "
                f"those): leave out the {extra}, or pick an edit model that takes several (Qwen-Image-Edit-2509)")  # fmt: skip
    if most == 1:
        return (f"{label} takes one picture, the one it edits, and no reference pictures: leave out the "
                f"{extra}, or pick an edit model that takes several (Qwen-Image-Edit-2509)")  # fmt: skip
    return (f"{label} takes at most {most} pictures (the one it edits and {most - 1} references); this recipe "
            f"has {given}: leave out {given - most}")  # fmt: skip


def check_for_architecture(recipe: Recipe, architecture: str, model_name: str) -> None:
    """What the model's architecture adds to :func:`validate_recipe`, once the model's header
    has told which it is: its size multiple (FLUX packs 2x2 latent patches: 16) and samplers.
    The bot checks the same rules first (bot.request.rules); this is for direct callers."""
    spec = _arch.get(architecture)
    if spec is None:
        return
    if spec.size is not None:
        for side_name, side in (("width", recipe.width), ("height", recipe.height)):
            around = spec.size.side_problem(side)
            if around is not None:
                raise EngineError(
                    ErrorCode.INVALID_RECIPE,
                    f"{spec.label} models like '{model_name}' need a {side_name} that is a multiple of "
                    f"{spec.size.multiple} (got {side}; use {around[0]} or {around[1]})",
                )
    if getattr(recipe, "shift", None) is not None and not spec.flow_matching:
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"{spec.label} models like '{model_name}' have no flow-matching shift (only the DiTs such as "
            "FLUX, Z-Image and Qwen-Image do); leave shift out",
        )
    problem = reference_problem(recipe, architecture)
    if problem is not None:
        raise EngineError(ErrorCode.INVALID_RECIPE, problem)
    if spec.samplers and recipe.sampler not in spec.samplers:
        raise EngineError(
            ErrorCode.INVALID_RECIPE,
            f"the sampler '{recipe.sampler}' does not run {spec.label} models like '{model_name}'; "
            f"use {', '.join(repr(s) for s in spec.samplers[:5])}",
        )
