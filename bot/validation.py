"""Checking an ``/imagine`` request against the server's registry before it costs GPU time.

:func:`validate` is pure (no I/O; the only outside input is the seed source, injectable) and
fast: lookups are dictionary hits on the :class:`~bot.registry.Catalog`, and "did you mean"
uses its trigram index. It reports *every* problem at once, each with what to do, so a
member fixes their command in one go.

Seeds: when the request has none (or -1, A1111's "random"), ``validate`` draws one from
``new_seed`` (default: :func:`random_seed`) and puts it in the recipe, so the posted recipe
always reproduces the image.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from bot.operator.safety import blocked_terms_in
from bot.registry.catalog import Catalog
from bot.registry.models import EmbeddingEntry, LoraEntry, ModelEntry, NsfwPolicy
from bot.registry.text import name_key, strip_invisible
from bot.request.parse import ImagineRequest, LoraRequest, ParseError, parse_weight
from bot.sources.refs import looks_like_air
from engine.families import families_differ, family_label, related
from engine.prompting.chunks import CHUNK_LENGTH, Chunker
from engine.protocol import EmbeddingRef, LoraRef, Recipe, architecture_label
from engine.recipe.sampler_names import SAMPLERS
from engine.tokenizer import BOS_ID, EOS_ID, clip_bpe

__all__ = [
    "ARCH_CFG",
    "ARCH_PIXELS",
    "SAMPLERS",
    "SEED_MAX",
    "Note",
    "Problem",
    "Rejected",
    "Validated",
    "random_seed",
    "validate",
]

SEED_MAX = 2**32 - 1

_SAMPLER_KEYS = {s.casefold(): s for s in SAMPLERS}

#: Pixel area each architecture handles well: (minimum, maximum, a size to suggest).
ARCH_PIXELS: dict[str, tuple[int, int, str]] = {
    "sd15": (256 * 256, 1024 * 768, "512x512 or 512x768"),
    "sdxl": (640 * 640, 1536 * 1536, "1024x1024 or 832x1216"),
    "sd3": (640 * 640, 1536 * 1536, "1024x1024"),
    "flux": (256 * 256, 2048 * 2048, "1024x1024"),
}


#: CFG that architectures trained with guidance distillation or flow matching tolerate:
#: (minimum, maximum, a value to suggest). Others only have the server's bounds.
ARCH_CFG: dict[str, tuple[float, float, str]] = {
    "flux": (1.0, 10.0, "3.5"),
    "sd3": (1.0, 15.0, "4.5 to 7"),
}


@dataclass(frozen=True)
class Problem:
    """Why a request cannot run. ``code`` is stable (tests, the bot's formatting)."""

    code: str
    message: str
    fix: str
    suggestions: tuple[str, ...] = ()

    def as_text(self) -> str:
        text = f"{self.message} {self.fix}"
        if self.suggestions:
            text += " Did you mean: " + ", ".join(f"`{s}`" for s in self.suggestions) + "?"
        return text


@dataclass(frozen=True)
class Note:
    """Something the member should know about a request that will run (a warning)."""

    code: str
    message: str


@dataclass(frozen=True)
class Validated:
    """A request that may run: the engine recipe plus what the member should be told."""

    recipe: Recipe
    model: ModelEntry
    #: The registry entries of the stack, in recipe order (for record_use and the embed).
    loras: tuple[LoraEntry, ...]
    notes: tuple[Note, ...] = ()
    #: Trigger words appended to the prompt because the server adds them automatically.
    added_trigger_words: tuple[str, ...] = ()
    #: True when the seed was drawn here rather than given by the member.
    seed_was_random: bool = False


@dataclass(frozen=True)
class Rejected:
    problems: tuple[Problem, ...]

    def as_text(self, limit: int = 2000) -> str:
        """All problems as a bulleted message, cut to ``limit`` characters (Discord: 2000)."""
        head = (
            "This request can't run yet:" if len(self.problems) > 1 else "This request can't run:"
        )
        lines = [head, *(f"• {p.as_text()}" for p in self.problems)]
        text = "\n".join(lines)
        return text if len(text) <= limit else text[: limit - 1] + "…"


def _mentions(prompt: str, word: str) -> bool:
    """True when ``word`` appears in ``prompt`` as a whole word or phrase, ignoring case.

    "art" inside "party" does not count as the trigger word "art".
    """
    pattern = r"(?<!\w)" + re.escape(word) + r"(?!\w)"
    return re.search(pattern, prompt, re.IGNORECASE) is not None


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


def _fmt(value: float) -> str:
    return f"{value:g}"


class _Check:
    """Collects problems and notes while one request is checked."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.notes: list[Note] = []

    def problem(
        self, code: str, message: str, fix: str, suggestions: list[str] | tuple[str, ...] = ()
    ) -> None:
        self.problems.append(Problem(code, message, fix, tuple(suggestions)))

    def note(self, code: str, message: str) -> None:
        self.notes.append(Note(code, message))


def validate(
    request: ImagineRequest,
    catalog: Catalog,
    *,
    new_seed: Callable[[], int] = random_seed,
) -> Validated | Rejected:
    """The engine recipe for ``request``, or every reason it cannot run with its fix."""
    check = _Check()
    settings = catalog.settings
    model = _check_model(request, catalog, check)

    prompt = strip_invisible(request.prompt).strip()
    negative = strip_invisible(request.negative_prompt).strip()
    if model is not None and not negative:
        negative = model.default_negative

    stack = _check_loras(request, catalog, model, check)

    added: list[str] = []
    for lora, _weight in stack:
        missing = [w for w in lora.trigger_words if not _mentions(prompt, w)]
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

    sampler = _check_sampler(request, model, check)
    steps = request.steps if request.steps is not None else (model.default_steps if model else 20)
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not settings.steps_min <= steps <= settings.steps_max
    ):
        check.problem(
            "steps_out_of_range",
            f"{steps!r} steps is outside this server's range {settings.steps_min} to {settings.steps_max}.",
            f"Use a whole number from {settings.steps_min} to {settings.steps_max}.",
        )
    cfg = request.cfg if request.cfg is not None else (model.default_cfg if model else 7.0)
    if (
        isinstance(cfg, bool)
        or not isinstance(cfg, (int, float))
        or not math.isfinite(cfg)
        or not settings.cfg_min <= cfg <= settings.cfg_max
    ):
        check.problem(
            "cfg_out_of_range",
            f"CFG {cfg!r} is outside this server's range {_fmt(settings.cfg_min)} to {_fmt(settings.cfg_max)}.",
            f"Use a number from {_fmt(settings.cfg_min)} to {_fmt(settings.cfg_max)}; 5 to 8 suits most models.",
        )
    elif model is not None and model.architecture in ARCH_CFG:
        low, high, typical = ARCH_CFG[model.architecture]
        if not low <= cfg <= high:
            check.problem(
                "cfg_wrong_for_architecture",
                f"CFG {_fmt(cfg)} is outside {_fmt(low)} to {_fmt(high)}, what {model.architecture} "
                f"models like `{model.name}` handle.",
                f"Use a CFG around {typical}.",
            )
    width, height = _check_size(request, model, catalog, check)
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
    seed, seed_was_random = _check_seed(request, check, new_seed)
    embeddings = _check_embeddings(prompt, negative, catalog, model, request, check)
    clip_skip = _check_clip_skip(request, model, stack, check)
    if model is not None:
        _note_families(model, stack, check)
        _note_length(prompt, negative, embeddings, check)

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
        steps=int(steps),
        cfg_scale=float(cfg),
        seed=seed,
        width=width,
        height=height,
        count=request.count,
        clip_skip=clip_skip,
        embeddings=tuple(EmbeddingRef(file=e.file, name=e.name, sha256=e.sha256) for e in embeddings),
        prediction_type=model.prediction_type,
    )
    return Validated(
        recipe=recipe,
        model=model,
        loras=tuple(lora for lora, _ in stack),
        notes=tuple(check.notes),
        added_trigger_words=tuple(added),
        seed_was_random=seed_was_random,
    )


def _nsfw_refusal(policy: NsfwPolicy, channel_is_nsfw: bool) -> str | None:
    """Why an NSFW entry may not be used here, or None when it may."""
    if policy is NsfwPolicy.ANYWHERE:
        return None
    if policy is NsfwPolicy.NEVER:
        return "This server does not allow NSFW models or LoRAs."
    if not channel_is_nsfw:
        return "NSFW models and LoRAs only work in age-restricted (NSFW) channels."
    return None


def _check_model(request: ImagineRequest, catalog: Catalog, check: _Check) -> ModelEntry | None:
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
        refusal = _nsfw_refusal(settings.nsfw_policy, request.channel_is_nsfw)
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


def _check_loras(
    request: ImagineRequest, catalog: Catalog, model: ModelEntry | None, check: _Check
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
        lora = _resolve_lora(wanted, catalog, check)
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
        if lora.nsfw:
            refusal = _nsfw_refusal(settings.nsfw_policy, request.channel_is_nsfw)
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
                f"Weight {_fmt(weight)} for `{lora.name}` is outside this server's range "
                f"{_fmt(settings.weight_min)} to {_fmt(settings.weight_max)}.{hint}",
                f"Use a weight from {_fmt(settings.weight_min)} to {_fmt(settings.weight_max)}; "
                f"`{lora.name}` is meant for {_fmt(lora.recommended_min)} to {_fmt(lora.recommended_max)}.",
            )
        elif weight > lora.recommended_max:
            check.note(
                "weight_above_recommended",
                f"Weight {_fmt(weight)} for `{lora.name}` is above its recommended "
                f"{_fmt(lora.recommended_min)} to {_fmt(lora.recommended_max)}; expect artefacts.",
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


def _resolve_lora(wanted: LoraRequest, catalog: Catalog, check: _Check) -> LoraEntry | None:
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


def _check_sampler(request: ImagineRequest, model: ModelEntry | None, check: _Check) -> str:
    if request.sampler is None:
        return model.default_sampler if model else "DPM++ 2M Karras"
    known = _SAMPLER_KEYS.get(" ".join(request.sampler.split()).casefold())
    if known is None:
        check.problem(
            "unknown_sampler",
            f"Unknown sampler `{request.sampler}`.",
            "Pick one from the sampler list.",
            [s for s in SAMPLERS if s.casefold().startswith(request.sampler.casefold()[:3])][:3],
        )
        return request.sampler
    return known


def _check_size(
    request: ImagineRequest, model: ModelEntry | None, catalog: Catalog, check: _Check
) -> tuple[int, int]:
    settings = catalog.settings
    width = request.width if request.width is not None else (model.default_width if model else 512)
    height = (
        request.height if request.height is not None else (model.default_height if model else 512)
    )
    sides_ok = True
    for side, what in ((width, "width"), (height, "height")):
        if isinstance(side, bool) or not isinstance(side, int):
            check.problem(
                "bad_size", f"The {what} {side!r} is not a whole number.", "Use pixels, e.g. 512."
            )
            sides_ok = False
        elif side % 8:
            sides_ok = False
            lower, upper = side - side % 8, side - side % 8 + 8
            check.problem(
                "size_not_multiple_of_8",
                f"The {what} {side} is not a multiple of 8.",
                f"Use {lower} or {upper}.",
            )
        elif not settings.size_min <= side <= settings.size_max:
            sides_ok = False
            check.problem(
                "size_out_of_range",
                f"The {what} {side} is outside this server's range {settings.size_min} to {settings.size_max}.",
                f"Use a {what} from {settings.size_min} to {settings.size_max}.",
            )
    if sides_ok and model is not None and model.architecture in ARCH_PIXELS:
        low, high, hint = ARCH_PIXELS[model.architecture]
        area = width * height
        if not low <= area <= high:
            size_word = "small" if area < low else "large"
            check.problem(
                "size_wrong_for_architecture",
                f"{width}x{height} is too {size_word} for {model.architecture} models like `{model.name}`.",
                f"Use a size around {hint}.",
            )
    return int(width) if isinstance(width, int) else 0, int(height) if isinstance(
        height, int
    ) else 0


def _check_seed(
    request: ImagineRequest, check: _Check, new_seed: Callable[[], int]
) -> tuple[int, bool]:
    seed = request.seed
    if seed is None or seed == -1:
        return new_seed(), True
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        check.problem(
            "seed_out_of_range",
            f"Seed {seed!r} is outside 0 to {SEED_MAX}.",
            "Use a whole number in that range, or leave it empty for a random seed.",
        )
        return 0, False
    return seed, False


def _check_embeddings(
    prompt: str,
    negative: str,
    catalog: Catalog,
    model: ModelEntry | None,
    request: ImagineRequest,
    check: _Check,
) -> list[EmbeddingEntry]:
    """The registered embeddings the prompt or negative names (as whole words, any case, as
    A1111 matches them), checked like LoRAs: enabled, NSFW policy, made for the model."""
    found: list[EmbeddingEntry] = []
    text = f"{prompt}\n{negative}"
    for embedding in catalog.embeddings.values():
        if not _mentions(text, embedding.name):
            continue
        if not embedding.enabled:
            check.note("embedding_disabled", f"`{embedding.name}` is a disabled embedding here; it is read as plain words.")
            continue
        if embedding.nsfw:
            refusal = _nsfw_refusal(catalog.settings.nsfw_policy, request.channel_is_nsfw)
            if refusal:
                check.problem("nsfw_embedding", f"`{embedding.name}` is an NSFW embedding. {refusal}", "Remove it.")
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


def _check_clip_skip(
    request: ImagineRequest, model: ModelEntry | None, stack: list[tuple[LoraEntry, float]], check: _Check
) -> int:
    value = request.clip_skip if request.clip_skip is not None else (model.default_clip_skip if model else 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        check.problem("clip_skip_out_of_range", f"Clip skip {value!r} is outside 1 to 12.", "Use 1 or 2.")
        return 1
    if model is not None and model.architecture == "sdxl" and value > 2:
        check.note(
            "clip_skip_sdxl",
            f"Clip skip {value} has no effect on SDXL: SDXL models always read the penultimate layer "
            "(what “clip skip 2” means for Pony), as in A1111.",
        )
    for lora, _ in stack:
        trained = lora.trained_clip_skip
        if trained and trained != value and (model is None or model.architecture == "sd15"):
            check.note(
                "clip_skip_differs",
                f"`{lora.name}` was trained with clip skip {trained}; this image uses {value}.",
            )
    return value


def _note_families(model: ModelEntry, stack: list[tuple[LoraEntry, float]], check: _Check) -> None:
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


def _note_length(prompt: str, negative: str, embeddings: list[EmbeddingEntry], check: _Check) -> None:
    """Tell the member how a long prompt is read: A1111's 75-token chunks, nothing cut."""
    bpe = clip_bpe()
    chunker = Chunker(bpe, bos=BOS_ID, eos=EOS_ID, comma=bpe.comma)
    for what, text in (("prompt", prompt), ("negative prompt", negative)):
        if not text:
            continue
        chunked = chunker.chunk(text)
        if chunked.token_count > CHUNK_LENGTH or len(chunked.chunks) > 1:
            check.note(
                "long_prompt",
                f"The {what} is {chunked.token_count} tokens, read whole as {len(chunked.chunks)} "
                f"chunks of {CHUNK_LENGTH} (as A1111 does).",
            )
