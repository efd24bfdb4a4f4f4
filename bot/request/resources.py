"""Resource checks: the names a request uses, resolved against the server's catalog.

Models, LoRAs (by name or AIR), embeddings named in the prompt, trigger words, NSFW policy,
channel rules and family warnings: everything here needs the :class:`~bot.registry.Catalog`.
The parameter rules (size, steps, CFG, sampler...) are in :mod:`bot.request.rules`.
"""

from __future__ import annotations

import re

from bot.registry.catalog import Catalog
from bot.registry.models import EmbeddingEntry, LoraEntry, ModelEntry, NsfwPolicy, ServerSettings
from bot.registry.text import name_key
from bot.request.outcome import Check, fmt
from bot.request.parse import ImagineRequest, LoraRequest, ParseError, parse_weight
from bot.request.rules import size_mismatch, variant_mismatch
from bot.sources.refs import looks_like_air
from engine import arch as architectures
from engine.families import families_differ, family_label, related
from engine.protocol import architecture_label


def mentions(prompt: str, word: str) -> bool:
    """True when ``word`` appears in ``prompt`` as a whole word or phrase, ignoring case.

    "art" inside "party" does not count as the trigger word "art".
    """
    pattern = r"(?<!\w)" + re.escape(word) + r"(?!\w)"
    return re.search(pattern, prompt, re.IGNORECASE) is not None


def nsfw_refusal(policy: NsfwPolicy, channel_is_nsfw: bool) -> str | None:
    """Why an NSFW entry may not be used here, or None when it may."""
    if policy is NsfwPolicy.ANYWHERE:
        return None
    if policy is NsfwPolicy.NEVER:
        return "This server does not allow NSFW models or LoRAs."
    if not channel_is_nsfw:
        return "NSFW models and LoRAs only work in age-restricted (NSFW) channels."
    return None


def check_model(request: ImagineRequest, catalog: Catalog, check: Check) -> ModelEntry | None:
    settings = catalog.settings
    name = request.model or settings.default_model
    if not name:
        enabled = sorted(m.name for m in catalog.models.values() if m.enabled)
        if len(enabled) == 1:
            name = enabled[0]
        else:
            check.problem(
                "no_model",
                "No model was chosen and this server has no default model.",
                "Pick one in the `model` option (or ask an admin to set a default in /settings).",
                enabled[:3],
            )
            return None
    model = catalog.model(name)
    if model is None:
        check.problem(
            "unknown_model",
            f"There is no model named `{name}` in this server.",
            "Pick one from the `model` list or see `/model list`.",
            catalog.suggest_models(name),
        )
        return None
    if not model.enabled:
        check.problem(
            "model_disabled",
            f"The model `{model.name}` is disabled on this server.",
            "Pick another model.",
            [
                m.name
                for m in catalog.models.values()
                if m.enabled and m.architecture == model.architecture
            ][:3],
        )
    if model.nsfw:
        refusal = nsfw_refusal(settings.nsfw_policy, request.channel_is_nsfw)
        if refusal:
            check.problem(
                "nsfw_model",
                f"`{model.name}` is an NSFW model. {refusal}",
                "Pick a model that is not marked NSFW, or use an NSFW channel.",
            )
    if not model.allowed_in(request.channel_id):
        channels = ", ".join(f"<#{c}>" for c in sorted(model.allowed_channel_ids)[:5])
        check.problem(
            "model_not_allowed_here",
            f"The model `{model.name}` may not be used in this channel.",
            f"Use it in {channels}, or pick another model here.",
        )
    return model


def check_loras(
    request: ImagineRequest, catalog: Catalog, model: ModelEntry | None, check: Check
) -> list[tuple[LoraEntry, float]]:
    """Each requested LoRA resolved and weighed; problems recorded for the rest."""
    settings = catalog.settings
    cap = settings.max_loras_for(request.user_role_ids)
    seen: dict[str, LoraRequest] = {}
    distinct: list[LoraRequest] = []
    for wanted in request.loras:
        key = name_key(wanted.name)
        if key and key in seen:
            check.problem(
                "duplicate_lora",
                f"`{wanted.name}` is in the stack twice ({seen[key].describe()} and {wanted.describe()}).",
                "Keep it once, with the weight you want.",
            )
            continue
        if key:
            seen[key] = wanted
        distinct.append(wanted)
    if len(distinct) > cap:
        check.problem(
            "too_many_loras",
            f"The stack has {len(distinct)} LoRAs (slots and inline `<lora:…>` tags together); "
            f"you may use up to {cap} on this server.",
            f"Remove {len(distinct) - cap} of them.",
        )

    stack: list[tuple[LoraEntry, float]] = []
    resolved: dict[str, LoraRequest] = {}
    for wanted in distinct:
        if not name_key(wanted.name):
            fix = (
                f"Pick a LoRA in `lora{wanted.position}`, or leave `weight{wanted.position}` empty."
                if wanted.origin == "slot"
                else "Write it as `<lora:name:0.7>`."
            )
            check.problem("empty_lora_name", f"The {wanted.describe()} has no LoRA name.", fix)
            continue
        lora = resolve_lora(wanted, catalog, check)
        if lora is None:
            # Its weight is checked all the same, so every problem is reported in one answer.
            try:
                parse_weight(wanted.weight_text, 1.0)
            except ParseError as error:
                check.problem("bad_weight", f"Weight for `{wanted.name}`: {error.message}", error.fix)
            continue
        if name_key(lora.name) in resolved:
            check.problem(
                "duplicate_lora",
                f"`{wanted.name}` is `{lora.name}`, which is in the stack already ({resolved[name_key(lora.name)].describe()}).",
                "Keep it once, with the weight you want.",
            )
            continue
        resolved[name_key(lora.name)] = wanted
        ok = True
        if not lora.enabled:
            ok = False
            check.problem(
                "lora_disabled",
                f"The LoRA `{lora.name}` is disabled on this server.",
                "Remove it from the stack or ask an admin to enable it.",
            )
        if (
            model is not None
            and lora.architecture != model.architecture
            and lora.architecture != "unknown"
        ):
            ok = False
            check.problem(
                "arch_mismatch",
                f"The LoRA `{lora.name}` was trained for {architecture_label(lora.architecture)}, "
                f"but the model `{model.name}` is {architecture_label(model.architecture)}: "
                "on it, the LoRA would do nothing.",
                f"Pick a LoRA made for {architecture_label(model.architecture)}, or a model made "
                f"for {architecture_label(lora.architecture)}.",
                catalog.suggest_loras(lora.name, architecture=model.architecture),
            )
        elif model is not None and (why := size_mismatch(model.architecture, lora.variant, model.variant)):
            ok = False
            check.problem(
                "arch_mismatch",
                f"The LoRA `{lora.name}` cannot run on `{model.name}`: {why}.",
                "Pick a LoRA made for this size of the model.",
                catalog.suggest_loras(lora.name, architecture=model.architecture),
            )
        if lora.nsfw:
            refusal = nsfw_refusal(settings.nsfw_policy, request.channel_is_nsfw)
            if refusal:
                ok = False
                check.problem(
                    "nsfw_lora",
                    f"`{lora.name}` is an NSFW LoRA. {refusal}",
                    "Remove it, or use an NSFW channel.",
                )
        try:
            weight = parse_weight(wanted.weight_text, lora.default_weight)
        except ParseError as error:
            check.problem("bad_weight", f"Weight for `{lora.name}`: {error.message}", error.fix)
            continue
        if not settings.weight_min <= weight <= settings.weight_max:
            ok = False
            hint = (
                ""
                if settings.weight_min < 0 or weight >= 0
                else " Negative weights need an admin to allow them in /settings."
            )
            check.problem(
                "weight_out_of_range",
                f"Weight {fmt(weight)} for `{lora.name}` is outside this server's range "
                f"{fmt(settings.weight_min)} to {fmt(settings.weight_max)}.{hint}",
                f"Use a weight from {fmt(settings.weight_min)} to {fmt(settings.weight_max)}; "
                f"`{lora.name}` is meant for {fmt(lora.recommended_min)} to {fmt(lora.recommended_max)}.",
            )
        elif weight > lora.recommended_max:
            check.note(
                "weight_above_recommended",
                f"Weight {fmt(weight)} for `{lora.name}` is above its recommended "
                f"{fmt(lora.recommended_min)} to {fmt(lora.recommended_max)}; expect artefacts.",
            )
        if lora.architecture == "unknown" and model is not None:
            check.note(
                "lora_architecture_unknown",
                f"The architecture of `{lora.name}` is unknown; if it does not fit "
                f"{architecture_label(model.architecture)}, the engine will refuse it.",
            )
        if ok:
            stack.append((lora, weight))
    return stack


def resolve_lora(wanted: LoraRequest, catalog: Catalog, check: Check) -> LoraEntry | None:
    """The registered LoRA a stack entry names, by name or by AIR (``civitai:120096@135931``);
    None with the problem recorded when there is none (or an AIR fits several)."""
    lora = catalog.lora(wanted.name)
    if lora is not None:
        return lora
    if not looks_like_air(wanted.name):
        check.problem(
            "unknown_lora",
            f"There is no LoRA named `{wanted.name}` in this server.",
            "Pick one from the autocomplete list or find it with `/lora search`.",
            catalog.suggest_loras(wanted.name),
        )
        return None
    found = catalog.loras_by_air(wanted.name)
    if len(found) == 1:
        return found[0]
    if found:
        check.problem(
            "ambiguous_air",
            f"`{wanted.name}` names a model of which this server has several versions: "
            + ", ".join(f"`{lora.name}`" for lora in found[:5]) + ".",
            "Add the version to the AIR (`civitai:MODEL@VERSION`) or pick the LoRA by name.",
        )
        return None
    check.problem(
        "unknown_air",
        f"No LoRA in this server has the AIR `{wanted.name}`.",
        f"An admin can fetch it from Civitai with `/lora add source:{wanted.name}`, or pick a LoRA from the list.",
    )
    return None


def check_embeddings(
    prompt: str,
    negative: str,
    catalog: Catalog,
    model: ModelEntry | None,
    request: ImagineRequest,
    check: Check,
) -> list[EmbeddingEntry]:
    """The registered embeddings the prompt or negative names (as whole words, any case, as
    A1111 matches them), checked like LoRAs: enabled, NSFW policy, made for the model."""
    found: list[EmbeddingEntry] = []
    text = f"{prompt}\n{negative}"
    for embedding in catalog.embeddings.values():
        if not mentions(text, embedding.name):
            continue
        if not embedding.enabled:
            check.note("embedding_disabled", f"`{embedding.name}` is a disabled embedding here; it is read as plain words.")
            continue
        if embedding.nsfw:
            refusal = nsfw_refusal(catalog.settings.nsfw_policy, request.channel_is_nsfw)
            if refusal:
                check.problem("nsfw_embedding", f"`{embedding.name}` is an NSFW embedding. {refusal}", "Remove it.")
                continue
        spec = architectures.get(model.architecture) if model is not None else None
        if model is not None and spec is not None and not spec.embeddings:
            check.problem(
                "embeddings_unsupported",
                f"`{embedding.name}` is a textual-inversion embedding: CLIP word vectors for SD 1.5/SDXL. "
                f"{spec.label} models like `{model.name}` read the prompt through T5, where it means nothing.",
                f"Remove `{embedding.name}` from the prompt and describe it in words.",
            )
            continue
        if model is not None and embedding.architecture not in ("unknown", model.architecture):
            check.problem(
                "embedding_arch_mismatch",
                f"The embedding `{embedding.name}` was made for {architecture_label(embedding.architecture)}, "
                f"but the model `{model.name}` is {architecture_label(model.architecture)}.",
                f"Remove `{embedding.name}` from the prompt or negative, or pick a "
                f"{architecture_label(embedding.architecture)} model.",
            )
            continue
        found.append(embedding)
    return found


def note_families(model: ModelEntry, stack: list[tuple[LoraEntry, float]], check: Check) -> None:
    """A LoRA of another family on a model of the same architecture often does little: warn."""
    for lora, _ in stack:
        if lora.architecture == model.architecture and families_differ(lora.family, model.family):
            kin = (
                f" ({family_label(model.family)} and {family_label(lora.family)} are related, so it may carry over)"
                if related(lora.family, model.family)
                else ""
            )
            check.note(
                "family_mismatch",
                f"`{lora.name}` is a {family_label(lora.family)} LoRA and `{model.name}` is a "
                f"{family_label(model.family)} model: it may have little effect{kin}.",
            )


def note_variants(model: ModelEntry, stack: list[tuple[LoraEntry, float]], check: Check) -> None:
    """A LoRA trained on another variant of the model's architecture (FLUX.1 schnell on dev,
    Kontext on a text-to-image model) runs, but its author did not make it for this: warn."""
    for lora, _ in stack:
        if lora.architecture != model.architecture:
            continue
        why = variant_mismatch(model.architecture, lora.variant, model.variant)
        if why is not None:
            check.note("variant_mismatch", f"`{lora.name}` on `{model.name}`: {why}.")


def apply_trigger_words(
    prompt: str, stack: list[tuple[LoraEntry, float]], settings: ServerSettings, check: Check
) -> tuple[str, list[str]]:
    """The prompt with the stack's missing trigger words added (when the server adds them),
    or a problem naming them; with the words added."""
    added: list[str] = []
    for lora, _weight in stack:
        missing = [w for w in lora.trigger_words if not mentions(prompt, w)]
        if not missing:
            continue
        if settings.auto_trigger_words:
            added.extend(w for w in missing if w not in added)
        else:
            check.problem(
                "missing_trigger_words",
                f"LoRA `{lora.name}` needs its trigger words: {', '.join(missing)}.",
                "Add them to your prompt; without them the LoRA has little effect.",
            )
    if added:
        # At the front: in the first 75-token chunk, which SDXL's pooled embedding also reads,
        # so no chunking or truncation can leave them out.
        prompt = f"{', '.join(added)}, {prompt}" if prompt else ", ".join(added)
        check.note(
            "trigger_words_added",
            f"Added trigger words at the start of the prompt: {', '.join(added)}.",
        )
    return prompt, added
