"""Parameter rules: size, steps, CFG, sampler, seed, clip skip and the prompt budget.

Pure functions of the request, the server's settings and the model's architecture, whose
rules come from its module in :mod:`engine.arch` (size multiple and range, guidance kind and
range, samplers, negative prompt, prompt budget): nothing here lists an architecture. The
checks that need the catalog's entries are in :mod:`bot.request.resources`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

from bot.registry.catalog import Catalog
from bot.registry.models import EmbeddingEntry, LoraEntry, ModelEntry
from bot.request.outcome import Check, fmt
from bot.request.parse import ImagineRequest
from engine import arch as architectures
from engine.arch.base import SizeRule
from engine.prompting.chunks import CHUNK_LENGTH, Chunker
from engine.recipe.model import MAX_SHIFT
from engine.recipe.sampler_names import SAMPLERS
from engine.tokenizer import BOS_ID, EOS_ID, clip_bpe

SEED_MAX = 2**32 - 1

_SAMPLER_KEYS = {s.casefold(): s for s in SAMPLERS}
#: Without a model (or of an unknown architecture) a size need only be latent-aligned.
_ANY_SIZE = SizeRule(multiple=8, min_pixels=0, max_pixels=2**62, hint="", default=(512, 512))


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


def spec_of(model: ModelEntry | None) -> architectures.Architecture | None:
    """The rules of the model's architecture; None without a model or for "unknown"."""
    return architectures.get(model.architecture) if model is not None else None


def variant_of(model: ModelEntry | None) -> str | None:
    """The model's variant where the registry knows one (FLUX dev or schnell)."""
    return model.variant if model is not None else None


def variant_mismatch(architecture: str, trained_on: str | None, used_on: str | None) -> str | None:
    """Why a LoRA trained on one variant of an architecture may not suit a model of another
    (a schnell LoRA on dev, a Kontext edit LoRA on a text-to-image model), or None when
    either variant is unknown or they are the same."""
    spec = architectures.get(architecture)
    if spec is None or not trained_on or not used_on or trained_on == used_on:
        return None
    lora, model = spec.variants.get(trained_on), spec.variants.get(used_on)
    if lora is None or model is None:
        return None
    text = f"it was trained on {lora.label} and this model is {model.label}"
    lora_does = spec.capabilities if lora.capabilities is None else lora.capabilities
    model_does = spec.capabilities if model.capabilities is None else model.capabilities
    if lora_does != model_does:
        what = {"edit": "editing a reference image", "inpaint": "inpainting", "txt2img": "text-to-image",
                "img2img": "image-to-image"}
        # Each side by its main task: image-to-image comes with text-to-image and tells nothing.
        order = ("edit", "inpaint", "txt2img", "img2img")

        def main(tasks: frozenset[str]) -> str:
            return what.get(next((t for t in order if t in tasks), ""), "/".join(sorted(tasks)))

        return f"{text}, made for {main(lora_does)} rather than {main(model_does)}: it may do little or spoil the image"
    return f"{text}: it may have less effect or change the image in ways its author did not test"


def size_mismatch(architecture: str, trained_on: str | None, used_on: str | None) -> str | None:
    """Why a LoRA trained for one size of an architecture cannot run on another (FLUX.2 Klein 4B
    and 9B: ``Variant.size``; their layers differ in width), or None."""
    spec = architectures.get(architecture)
    lora = spec.variants.get(trained_on or "") if spec else None
    model = spec.variants.get(used_on or "") if spec else None
    if lora is None or model is None or not lora.size or not model.size or lora.size == model.size:
        return None
    return f"it was trained for {lora.label} and this model is {model.label}, whose layers have other sizes"


def check_steps(request: ImagineRequest, model: ModelEntry | None, catalog: Catalog, check: Check) -> object:
    settings = catalog.settings
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
    return steps


def check_cfg(request: ImagineRequest, model: ModelEntry | None, catalog: Catalog, check: Check) -> object:
    """The CFG (or distilled guidance) scale: the server's bounds, then the architecture's."""
    settings = catalog.settings
    cfg = request.cfg if request.cfg is not None else (model.default_cfg if model else 7.0)
    spec = spec_of(model)
    guidance = spec.guidance_for(variant_of(model)) if spec else None
    if (
        isinstance(cfg, bool)
        or not isinstance(cfg, (int, float))
        or not math.isfinite(cfg)
        or not settings.cfg_min <= cfg <= settings.cfg_max
    ):
        check.problem(
            "cfg_out_of_range",
            f"CFG {cfg!r} is outside this server's range {fmt(settings.cfg_min)} to {fmt(settings.cfg_max)}.",
            f"Use a number from {fmt(settings.cfg_min)} to {fmt(settings.cfg_max)}; 5 to 8 suits most models.",
        )
    elif model is not None and guidance is not None and guidance.low is not None and guidance.high is not None:
        if not guidance.low <= cfg <= guidance.high:
            check.problem(
                "cfg_wrong_for_architecture",
                f"CFG {fmt(cfg)} is outside {fmt(guidance.low)} to {fmt(guidance.high)}, what {model.architecture} "
                f"models like `{model.name}` handle.",
                f"Use a CFG around {guidance.typical}.",
            )
    return cfg


def uses_guidance(model: ModelEntry) -> bool:
    """False for a model distilled to run without guidance (FLUX.1 schnell)."""
    spec = spec_of(model)
    return spec is None or spec.guidance_for(variant_of(model)).kind != "none"


def note_ignored(request: ImagineRequest, model: ModelEntry | None, check: Check) -> None:
    """A CFG or negative prompt the member set on a model that does not read it: say so
    instead of dropping it silently (FLUX schnell has no guidance; FLUX has no negative)."""
    spec = spec_of(model)
    if spec is None or model is None:
        return
    variant = variant_of(model)
    if request.cfg is not None and spec.guidance_for(variant).kind == "none":
        check.note(
            "cfg_ignored",
            f"`{model.name}` ({spec.label}) was distilled to run without guidance: the CFG you set is not used.",
        )
    if request.negative_prompt.strip() and not spec.negative_for(variant):
        check.note(
            "negative_ignored",
            f"`{model.name}` ({spec.label}) does not read a negative prompt: yours is not used. "
            "Describe what you want in the prompt instead.",
        )


def check_sampler(request: ImagineRequest, model: ModelEntry | None, check: Check) -> str:
    spec = spec_of(model)
    if request.sampler is None:
        return model.default_sampler if model else "DPM++ 2M Karras"
    known = _SAMPLER_KEYS.get(" ".join(request.sampler.split()).casefold())
    if known is not None and spec is not None and spec.samplers and known not in spec.samplers:
        check.problem(
            "sampler_wrong_for_architecture",
            f"The sampler `{known}` does not run {spec.label} models like `{model.name if model else ''}`.",
            f"Use {', '.join(f'`{s}`' for s in spec.samplers[:5])}.",
        )
        return known
    if known is None:
        check.problem(
            "unknown_sampler",
            f"Unknown sampler `{request.sampler}`.",
            "Pick one from the sampler list.",
            [s for s in SAMPLERS if s.casefold().startswith(request.sampler.casefold()[:3])][:3],
        )
        return request.sampler
    return known


def check_size(
    request: ImagineRequest, model: ModelEntry | None, catalog: Catalog, check: Check
) -> tuple[int, int]:
    settings = catalog.settings
    width = request.width if request.width is not None else (model.default_width if model else 512)
    height = (
        request.height if request.height is not None else (model.default_height if model else 512)
    )
    spec = spec_of(model)
    rule = spec.size if spec is not None and spec.size is not None else _ANY_SIZE
    sides_ok = True
    for side, what in ((width, "width"), (height, "height")):
        if isinstance(side, bool) or not isinstance(side, int):
            check.problem(
                "bad_size", f"The {what} {side!r} is not a whole number.", "Use pixels, e.g. 512."
            )
            sides_ok = False
        elif (around := rule.side_problem(side)) is not None:
            sides_ok = False
            lower, upper = around
            check.problem(
                f"size_not_multiple_of_{rule.multiple}",
                f"The {what} {side} is not a multiple of {rule.multiple}.",
                f"Use {lower} or {upper}.",
            )
        elif not settings.size_min <= side <= settings.size_max:
            sides_ok = False
            check.problem(
                "size_out_of_range",
                f"The {what} {side} is outside this server's range {settings.size_min} to {settings.size_max}.",
                f"Use a {what} from {settings.size_min} to {settings.size_max}.",
            )
    if sides_ok and model is not None and rule is not _ANY_SIZE:
        size_word = rule.area_problem(width, height)
        if size_word is not None:
            check.problem(
                "size_wrong_for_architecture",
                f"{width}x{height} is too {size_word} for {model.architecture} models like `{model.name}`.",
                f"Use a size around {rule.hint}.",
            )
    return int(width) if isinstance(width, int) else 0, int(height) if isinstance(
        height, int
    ) else 0


def check_shift(request: ImagineRequest, model: ModelEntry | None, check: Check) -> float | None:
    """The recipe's flow-matching shift (the member's, else the profile's; None: the model's
    own), or None with a problem where the model has none or the value is out of range."""
    value = request.shift
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SHIFT:
        check.problem(
            "shift_out_of_range",
            f"Shift {value!r} is outside what a flow-matching model runs (above 0, at most {MAX_SHIFT:g}).",
            "Leave shift empty for the model's own, or use 3 (Qwen-Image-Lightning's).",
        )
        return None
    spec = spec_of(model)
    if spec is not None and not spec.flow_matching:
        check.problem(
            "shift_unsupported",
            f"Shift is a setting of flow-matching models (FLUX, Z-Image, Qwen-Image); {spec.label} "
            "models sample another way and have none.",
            "Leave shift empty.",
        )
        return None
    return float(value)


def check_seed(
    request: ImagineRequest, check: Check, new_seed: Callable[[], int]
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


def check_clip_skip(
    request: ImagineRequest, model: ModelEntry | None, stack: list[tuple[LoraEntry, float]], check: Check
) -> int:
    value = request.clip_skip if request.clip_skip is not None else (model.default_clip_skip if model else 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        check.problem("clip_skip_out_of_range", f"Clip skip {value!r} is outside 1 to 12.", "Use 1 or 2.")
        return 1
    spec = spec_of(model)
    if spec is not None and not spec.clip_skip and value != 1:
        check.problem(
            "clip_skip_unsupported",
            f"Clip skip is an A1111 setting for CLIP-prompted models; {spec.label} models read their "
            "prompt through T5, where it means nothing.",
            "Leave clip skip empty (or 1).",
        )
        return 1
    if spec is not None and spec.clip_skip_note and value > 2:
        # The code keeps its first architecture's name: tests and formatting key on it.
        check.note("clip_skip_sdxl", spec.clip_skip_note.format(value=value))
    # Only where clip skip changes what the model reads does a LoRA's training value matter.
    reads_it = model is None or (spec is not None and spec.clip_skip and spec.clip_skip_note is None)
    for lora, _ in stack:
        trained = lora.trained_clip_skip
        if trained and trained != value and reads_it:
            check.note(
                "clip_skip_differs",
                f"`{lora.name}` was trained with clip skip {trained}; this image uses {value}.",
            )
    return value


def note_length(
    prompt: str, negative: str, embeddings: list[EmbeddingEntry], check: Check, model: ModelEntry | None = None
) -> None:
    """Tell the member how a long prompt is read: A1111's 75-token chunks, nothing cut.

    Only for architectures whose prompt budget is CLIP chunks; a T5 budget (FLUX) is counted
    by the engine with its own tokenizer.
    """
    spec = spec_of(model)
    if spec is not None and spec.budget_for(variant_of(model)).kind != "clip_chunks":
        return
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
