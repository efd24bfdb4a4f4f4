"""Merging a sampling profile into a request: model defaults, then the profile, then the
member's explicit options (issue 21).

A speed LoRA (or a distilled checkpoint) needs its own sampler, steps and CFG
(:mod:`engine.profiles`). :func:`merge_profile` picks the profile of the request, from the
stack's speed LoRA, else the model's own, and fills in every option the member left empty
from it; the parameter rules (:mod:`bot.request.rules`) then check the result as if the
member had typed it. What the member did type is kept even where it fights the profile (a
member may know better), with a one-line note saying what the LoRA wants. Refused, with the
reason: two speed LoRAs in one stack (each wants its own steps and sampler), and a profile
the model cannot run (another architecture or variant, a sampler its architecture lacks).

Pure and cheap (dictionary lookups and comparisons): it runs for every ``/imagine``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bot.registry.catalog import Catalog
from bot.registry.models import LoraEntry, ModelEntry
from bot.request.outcome import Check, fmt
from bot.request.parse import ImagineRequest, LoraRequest
from engine import arch as architectures
from engine import profiles
from engine.profiles import SpeedProfile
from engine.recipe.sampler_names import ETA_SAMPLERS


@dataclass(frozen=True)
class Merged:
    """The request with the profile's settings filled in, and what the recipe needs besides."""

    request: ImagineRequest
    profile: SpeedProfile | None = None
    #: Who brought the profile: the speed LoRA's name, or the model's.
    source: str = ""


def _profile_of(entry: LoraEntry | ModelEntry) -> SpeedProfile | None:
    return profiles.get(entry.speed_profile)


def merge_profile(
    request: ImagineRequest, model: ModelEntry | None, stack: list[tuple[LoraEntry, float]], check: Check
) -> Merged:
    """The request to check, with the stack's (or model's) profile merged in; problems and
    notes go to ``check``."""
    speed = [(lora, weight, p) for lora, weight in stack if (p := _profile_of(lora)) is not None]
    if len(speed) > 1:
        names = ", ".join(f"`{lora.name}` ({p.label})" for lora, _, p in speed)
        check.problem(
            "two_speed_loras",
            f"The stack has {len(speed)} speed LoRAs: {names}. Each wants its own sampler and steps, "
            "and together they burn the image.",
            "Keep one of them.",
        )
        return Merged(request)
    profile, source, weight = None, "", None
    if speed:
        lora, weight, profile = speed[0]
        source = lora.name
    elif model is not None and (own := _profile_of(model)) is not None:
        profile, source = own, model.name
    if profile is None or model is None:
        return Merged(request)
    spec = architectures.get(model.architecture)
    why = profile.cannot_run(model.architecture, model.variant, spec.samplers if spec is not None else ())
    if why is not None or spec is None or not spec.runnable:
        why = why or f"{profile.label} needs a {' / '.join(profile.architectures)} model this engine runs"
        check.problem(
            "profile_cannot_run",
            f"`{source}` needs the {profile.label} settings, and `{model.name}` cannot run them: {why}.",
            f"Use it with a {' / '.join(profile.architectures)} model, or leave it out.",
        )
        return Merged(request, profile, source)
    wants = f"`{source}` ({profile.label}) wants"
    if request.sampler is not None and " ".join(request.sampler.split()).casefold() != profile.sampler.casefold():
        check.note("profile_sampler", f"{wants} the sampler {profile.sampler}; running your {request.sampler}.")
    low, high = profile.steps_allowed
    if isinstance(request.steps, int) and not low <= request.steps <= high:
        steps = f"{low}" if low == high else f"{low} to {high}"
        check.note("profile_steps", f"{wants} {steps} steps; running your {request.steps}.")
    low_cfg, high_cfg = profile.cfg_allowed
    reads_cfg = spec.guidance_for(model.variant).kind != "none"  # else rules.note_ignored says so
    if reads_cfg and isinstance(request.cfg, (int, float)) and not low_cfg <= request.cfg <= high_cfg:
        cfg = fmt(profile.cfg) if low_cfg == high_cfg else f"{fmt(low_cfg)} to {fmt(high_cfg)}"
        check.note("profile_cfg", f"{wants} CFG {cfg}; running your {fmt(request.cfg)}.")
    if profile.shift is not None and isinstance(request.shift, (int, float)) and request.shift != profile.shift:
        check.note("profile_shift", f"{wants} shift {fmt(profile.shift)}; running your {fmt(request.shift)}.")
    if weight is not None and profile.lora_weight is not None and abs(weight - profile.lora_weight) > 1e-9:
        check.note("profile_weight", f"{wants} weight {fmt(profile.lora_weight)}; running your {fmt(weight)}.")
    merged = dataclasses.replace(
        request,
        sampler=request.sampler if request.sampler is not None else profile.sampler,
        steps=request.steps if request.steps is not None else profile.steps,
        cfg=request.cfg if request.cfg is not None else profile.cfg,
        shift=request.shift if request.shift is not None else profile.shift,
    )
    check.note("profile", f"Sampling profile {profile.label} (from `{source}`): {profile.summary()}.")
    return Merged(merged, profile, source)


def apply_fast_mode(request: ImagineRequest, catalog: Catalog, check: Check) -> ImagineRequest:
    """The request as fast mode makes it: with the model's speed LoRA added to the stack (its
    profile then sets the sampler and steps), or on the faster model its admin named.

    Fast mode applies where the member asks (``speed:fast``) or the server has it on and the
    member did not ask for ``speed:normal``; a model without a fast setting runs as usual
    (the member who asked is told). A stack that already has a speed LoRA is left alone.
    """
    asked = request.speed == "fast"
    if not asked and not (catalog.settings.fast_mode and request.speed != "normal"):
        return request
    name = request.model or catalog.settings.default_model
    model = catalog.model(name) if name else None
    if model is None:
        return request  # check_model reports it
    target = model.fast_with
    if not target:
        if asked:
            check.note("fast_unset", f"`{model.name}` has no fast setting (an admin sets one with "
                                     "`/model edit fast_with:`); running it as usual.")  # fmt: skip
        return request
    faster = catalog.model(target)
    if faster is not None:
        check.note("fast", f"Fast mode: running `{faster.name}` instead of `{model.name}`.")
        return dataclasses.replace(request, model=faster.name)
    lora = catalog.lora(target)
    if lora is None or profiles.get(lora.speed_profile) is None:
        check.note("fast_unset", f"`{model.name}`'s fast setting `{target}` is no longer a speed LoRA or a model "
                                 "here; running it as usual.")  # fmt: skip
        return request
    stack = [catalog.lora(wanted.name) for wanted in request.loras]
    if any(entry is not None and entry.speed_profile for entry in stack):
        return request  # the member's own speed LoRA
    if len(request.loras) >= catalog.settings.max_loras_for(request.user_role_ids):
        check.note("fast_unset", f"Fast mode needs a LoRA slot for `{lora.name}` and your stack is full; "
                                 "running it as usual.")  # fmt: skip
        return request
    position = len(request.loras) + 1
    check.note("fast", f"Fast mode: added `{lora.name}`.")
    return dataclasses.replace(request, loras=(*request.loras, LoraRequest(lora.name, None, "slot", position)))


def eta_for(merged: Merged, sampler: str) -> float | None:
    """The eta the recipe records: the profile's where its sampler runs, else the sampler's
    own default where it reads one (TCD), else None (written nowhere, as before)."""
    if merged.profile is not None and merged.profile.eta is not None and sampler == merged.profile.sampler:
        return merged.profile.eta
    return ETA_SAMPLERS["TCD"] if sampler == "TCD" else None


__all__ = ["Merged", "apply_fast_mode", "eta_for", "merge_profile"]
