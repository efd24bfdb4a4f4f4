"""Checking an ``/imagine`` request against the server's registry before it costs GPU time.

:func:`validate` is pure (no I/O; the only outside input is the seed source, injectable) and
fast: lookups are dictionary hits on the :class:`~bot.registry.Catalog`, and "did you mean"
uses its trigram index. It reports *every* problem at once, each with what to do, so a
member fixes their command in one go. It joins two kinds of check:

- resource checks (:mod:`bot.request.resources`): the names the request uses resolved
  against the catalog (model, LoRAs, embeddings, trigger words, NSFW and channel rules);
- parameter rules (:mod:`bot.request.rules`): size, steps, CFG, sampler, seed, clip skip and
  the prompt budget, read from the model's architecture module (:mod:`engine.arch`).

Seeds: when the request has none (or -1, A1111's "random"), ``validate`` draws one from
``new_seed`` (default: :func:`random_seed`) and puts it in the recipe, so the posted recipe
always reproduces the image.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.operator.safety import blocked_terms_in
from bot.registry.catalog import Catalog
from bot.registry.text import strip_invisible
from bot.request.outcome import Check, Note, Problem, Rejected, Validated
from bot.request.parse import ImagineRequest
from bot.request.profiles import apply_fast_mode, eta_for, merge_profile
from bot.request.resources import (
    apply_trigger_words,
    check_embeddings,
    check_loras,
    check_model,
    note_families,
    note_variants,
)
from bot.request.rules import (
    SEED_MAX,
    check_cfg,
    check_clip_skip,
    check_sampler,
    check_seed,
    check_shift,
    check_size,
    check_steps,
    note_ignored,
    note_length,
    random_seed,
    uses_guidance,
)
from engine.protocol import EmbeddingRef, LoraRef, Recipe
from engine.recipe.sampler_names import SAMPLERS

__all__ = [
    "SAMPLERS",
    "SEED_MAX",
    "Note",
    "Problem",
    "Rejected",
    "Validated",
    "random_seed",
    "validate",
]


def validate(
    request: ImagineRequest,
    catalog: Catalog,
    *,
    new_seed: Callable[[], int] = random_seed,
) -> Validated | Rejected:
    """The engine recipe for ``request``, or every reason it cannot run with its fix."""
    check = Check()
    settings = catalog.settings
    request = apply_fast_mode(request, catalog, check)
    model = check_model(request, catalog, check)

    prompt = strip_invisible(request.prompt).strip()
    negative = strip_invisible(request.negative_prompt).strip()
    if model is not None and not negative:
        negative = model.default_negative

    stack = check_loras(request, catalog, model, check)

    prompt, added = apply_trigger_words(prompt, stack, settings, check)
    if not prompt:
        check.problem(
            "empty_prompt", "The prompt is empty.", "Describe the image you want in `prompt`."
        )

    blocked = blocked_terms_in(request.prompt, settings.blocked_words)
    if blocked:
        check.problem(
            "prompt_blocked",
            "The prompt uses words this server does not allow: "
            + ", ".join(f"`{term}`" for term in blocked) + ".",
            "Remove them and send the request again.",
        )
    if len(prompt) > settings.prompt_limit:
        extra = " (including the trigger words added for your LoRAs)" if added else ""
        check.problem(
            "prompt_too_long",
            f"The prompt is {len(prompt):,} characters{extra}; this server allows {settings.prompt_limit:,}.",
            "Shorten the prompt.",
        )
    if len(negative) > settings.negative_prompt_limit:
        check.problem(
            "negative_prompt_too_long",
            f"The negative prompt is {len(negative):,} characters; this server allows "
            f"{settings.negative_prompt_limit:,}.",
            "Shorten the negative prompt.",
        )

    # Model defaults, then the stack's (or model's) sampling profile, then the member's options.
    merged = merge_profile(request, model, stack, check)
    sampler = check_sampler(merged.request, model, check)
    steps = check_steps(merged.request, model, catalog, check)
    cfg = check_cfg(merged.request, model, catalog, check)
    shift = check_shift(merged.request, model, check)
    note_ignored(request, model, check)
    width, height = check_size(request, model, catalog, check)
    if (
        isinstance(request.count, bool)
        or not isinstance(request.count, int)
        or not 1 <= request.count <= settings.max_count
    ):
        check.problem(
            "count_out_of_range",
            f"{request.count!r} images requested; this server allows 1 to {settings.max_count} per request.",
            f"Ask for 1 to {settings.max_count} images.",
        )
    seed, seed_was_random = check_seed(request, check, new_seed)
    embeddings = check_embeddings(prompt, negative, catalog, model, request, check)
    clip_skip = check_clip_skip(request, model, stack, check)
    if model is not None:
        note_families(model, stack, check)
        note_variants(model, stack, check)
        note_length(prompt, negative, embeddings, check, model)

    if check.problems or model is None:
        return Rejected(tuple(check.problems))
    recipe = Recipe(
        model=model.file,
        model_name=model.name,
        vae=model.vae,
        # Lower case, as A1111 and the engine's PNG write it.
        model_hash=(model.sha256[:10] if model.sha256 else (model.autov2 or "")).lower(),
        prompt=prompt,
        negative_prompt=negative,
        loras=tuple(
            LoraRef(file=l.file, weight=w, name=l.name, sha256=l.sha256, a1111_hash=l.a1111_hash)
            for l, w in stack  # noqa: E741
        ),
        sampler=sampler,
        steps=int(steps),  # type: ignore[call-overload]
        # A model without a guidance input (FLUX.1 schnell) runs as at CFG 1 whatever was set
        # (the member is told): the recipe says what was used, as Forge writes it.
        cfg_scale=float(cfg) if uses_guidance(model) else 1.0,  # type: ignore[arg-type]
        seed=seed,
        width=width,
        height=height,
        count=request.count,
        clip_skip=clip_skip,
        embeddings=tuple(EmbeddingRef(file=e.file, name=e.name, sha256=e.sha256) for e in embeddings),
        prediction_type=model.prediction_type,
        architecture=model.architecture,
        variant=model.variant or "",
        eta=eta_for(merged, sampler),
        shift=shift,
    )
    return Validated(
        recipe=recipe,
        model=model,
        loras=tuple(lora for lora, _ in stack),
        notes=tuple(check.notes),
        added_trigger_words=tuple(added),
        seed_was_random=seed_was_random,
        profile=merged.profile.id if merged.profile is not None else None,
    )
