"""AUTOMATIC1111's ``parameters`` text: the one writer and the one reader of it.

The engine writes this text into every PNG and the bot's Recipe button shows it; both call
:func:`write_parameters`, so the two can no longer drift apart. A1111's PNG Info, Forge and
Civitai read it back, and :func:`read_parameters` reads what they write::

    prompt <lora:name:0.8>
    Negative prompt: negative
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768,
    Model hash: 6ce0161689, Model: name, Clip skip: 2, TI hashes: "emb: 0123456789ab",
    Lora hashes: "name: 0123456789ab", Version: atelier 0.1.0

(the settings are one line). On FLUX.1 the text is Forge's: ``CFG scale: 1, Distilled CFG
Scale: 3.5`` for dev (the recipe's ``cfg_scale`` is its guidance input), ``CFG scale: 1`` for
schnell (no guidance input). Values holding ``,`` ``:`` or a newline are JSON-quoted, as
A1111's ``quote`` does; Civitai writes JSON lists and objects unquoted (``Civitai resources:
[...]``), which the reader also takes.

What the text cannot carry: file paths (it names files by their stem), ``count``, a VAE's
folder, embeddings without a hash, whitespace at the very start or end of the text, the input
pictures (an edit's further ones are named by short hash: ``Reference images``). Reading
:func:`write_parameters`'s output gives back every other field exactly (see
:func:`carried`).

The settings line is split by a hand-written linear scanner rather than A1111's regular
expression: that expression backtracks quadratically on a long line without colons, and the
reader sees untrusted text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.recipe.model import EmbeddingRef, LoraRef, Recipe, file_stem

#: Longest text read; a real ``parameters`` text is a few kB (prompts are capped at 6000).
MAX_TEXT = 256 * 1024
#: Schedule types A1111 (1.9+) writes as their own field; a sampler name may end with one.
SCHEDULES = ("Karras", "Exponential", "SGM Uniform", "Polyexponential", "KL Optimal", "Align Your Steps", "Beta", "Simple", "Normal", "Uniform", "DDIM")
_AUTOMATIC = "Automatic"
_NEGATIVE = "Negative prompt:"
_TAG = re.compile(r"<\s*(lora|lyco)\s*:([^<>]*)>", re.IGNORECASE)
_KEY_CHARS = re.compile(r"[\w \-/]")
#: An edit's further pictures (``Recipe.references``), which A1111 has no field for: their
#: sha256s' first 10 hex digits (as ``Model hash`` shortens a file's), in order. Like the
#: input image itself they are not carried back into a recipe (the text holds no pictures);
#: the reader hands them on as :attr:`ReadParameters.references` to be reported.
REFERENCES = "Reference images"
#: Fields the reader turns into recipe fields; everything else is returned as ``extras``.
_USED = frozenset(
    {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
     "VAE", "Clip skip", "TI hashes", "Lora hashes", "Distilled CFG Scale", "Eta", "Shift",
     "Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Hires strength", "Resize mode",
     REFERENCES}
)  # fmt: skip
#: Forge's field for FLUX.1 dev's guidance input (``modules/processing.py``), written right
#: after ``CFG scale``, which Forge keeps at 1 on FLUX (no unconditioned pass).
DISTILLED = "Distilled CFG Scale"


def number(value: float) -> str:
    """A weight or CFG as A1111 shows it (``1``, ``0.7``, ``-0.5``), and exactly: the shortest
    text that reads back as the same float (``:g`` would turn 0.1234567 into 0.123457)."""
    value = float(value) + 0.0  # -0.0 -> 0.0
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def quote(value: str) -> str:
    """A1111's rule: values with ``,`` ``:`` or a newline are written as JSON strings."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return loaded if isinstance(loaded, str) else value
    return value


def alias(name: str, drop: str) -> str:
    """A name without the characters that would split its field (A1111 strips them too)."""
    return "".join(ch for ch in name if ch not in drop) or "lora"


def split_sampler(sampler: str) -> tuple[str, str]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; ``"Euler a"`` -> ``("Euler a", "Automatic")``."""
    for schedule in SCHEDULES:
        if sampler.endswith(" " + schedule) and len(sampler) > len(schedule) + 1:
            return sampler[: -len(schedule) - 1], schedule
    return sampler, _AUTOMATIC


def join_sampler(sampler: str, schedule: str | None) -> str:
    """The inverse of :func:`split_sampler`, also for text older A1111 versions wrote."""
    schedule = (schedule or "").strip()
    if not schedule or schedule == _AUTOMATIC or sampler.endswith(" " + schedule):
        return sampler
    return f"{sampler} {schedule}"


def lora_tags(loras: Iterable[LoraRef]) -> str:
    """The stack as ``<lora:name:weight>`` tags (A1111 ends a tag's name at ``:`` or ``>``)."""
    return " ".join(f"<lora:{alias(lo.display_name, ':<>')}:{number(lo.weight)}>" for lo in loras)


def _hash_list(pairs: Iterable[tuple[str, str]]) -> str:
    # A1111 (extensions-builtin/Lora/networks.py) strips ":" and "," from each alias so the
    # "name: hash, name: hash" list can be split again.
    return ", ".join(f"{alias(name, ':,')}: {value}" for name, value in pairs)


def _guidance_fields(recipe: Recipe) -> list[tuple[str, str]]:
    """CFG as A1111 writes it; on FLUX as Forge does: ``CFG scale: 1`` (one row per step, no
    negative), then dev's guidance input as ``Distilled CFG Scale`` (Forge writes none for
    schnell, which has no guidance input)."""
    kind = recipe.guidance_kind
    if kind == "cfg":
        return [("CFG scale", number(recipe.cfg_scale))]
    if kind == "distilled":
        return [("CFG scale", "1"), (DISTILLED, number(recipe.cfg_scale))]
    return [("CFG scale", "1")]


def _picture_fields(recipe: Recipe) -> list[tuple[str, str]]:
    """What A1111 writes for image-to-image (``Denoising strength``) and its hires fix
    (``Hires upscale``, ``Hires steps`` when set, ``Hires upscaler``, the pass's strength as
    ``Denoising strength``). An image-to-image recipe with an upscale pass has two strengths:
    the second is written as ``Hires strength``, which only this reader knows."""
    from engine.recipe.picture import RESIZE_MODES

    fields: list[tuple[str, str]] = []
    init = bool(getattr(recipe, "init_image", ""))
    if init and _edits(recipe):
        # An edit (FLUX.1 Kontext) has no denoising strength; A1111 has no field for it, so it
        # names its source (an extra field: readers keep it among the extras).
        fields.append(("Edit of", recipe.init_image_source or recipe.init_image[:12]))
    elif init:
        fields.append(("Denoising strength", number(recipe.strength)))
        if recipe.resize_mode != "just_resize":
            fields.append(("Resize mode", RESIZE_MODES.get(recipe.resize_mode, recipe.resize_mode)))
    if recipe.hires_scale:
        if not init:
            fields.append(("Denoising strength", number(recipe.hires_strength)))
        fields.append(("Hires upscale", number(recipe.hires_scale)))
        if recipe.hires_steps:
            fields.append(("Hires steps", str(recipe.hires_steps)))
        fields.append(("Hires upscaler", recipe.hires_upscaler or "Lanczos"))
        if init:
            fields.append(("Hires strength", number(recipe.hires_strength)))
    references = getattr(recipe, "references", ())
    if references:
        fields.append((REFERENCES, ", ".join(digest[:10] for digest in references)))
    return fields


def _edits(recipe: Recipe) -> bool:
    """Whether the recipe's variant is an edit model's (its picture is edited, not denoised)."""
    from engine import arch

    spec = arch.get(recipe.architecture)
    found = spec.variants.get(recipe.variant) if spec is not None and recipe.variant else None
    return found is not None and found.capabilities is not None and "edit" in found.capabilities


def _read_picture_fields(params: dict[str, str]) -> dict[str, object]:
    """The inverse of :func:`_picture_fields` (the input image itself is never in the text)."""
    from engine.recipe.picture import RESIZE_MODES

    values: dict[str, object] = {}
    strength = _float(params.get("Denoising strength"))
    scale = _float(params.get("Hires upscale"))
    if scale is not None and 1 <= scale <= 4:
        values["hires_scale"] = scale
        steps = _int(params.get("Hires steps"))
        if steps is not None and 0 <= steps <= 150:
            values["hires_steps"] = steps
        values["hires_upscaler"] = params.get("Hires upscaler", "").strip() or "Lanczos"
        second = _float(params.get("Hires strength"))
        if second is not None and 0 <= second <= 1:
            values["hires_strength"] = second
            if strength is not None and 0 <= strength <= 1:
                values["strength"] = strength
        elif strength is not None and 0 <= strength <= 1:
            values["hires_strength"] = strength
    elif strength is not None and 0 <= strength <= 1:
        values["strength"] = strength
    mode = params.get("Resize mode", "").strip()
    for name, label in RESIZE_MODES.items():
        if mode.lower() == label.lower():
            values["resize_mode"] = name
    return values


def write_parameters(recipe: Recipe, *, version: str | None = None) -> str:
    """The ``parameters`` text of one image of ``recipe`` (its ``seed`` is that image's)."""
    if version is None:
        from engine.recipe import atelier_version

        version = f"atelier {atelier_version()}"
    sampler, schedule = split_sampler(recipe.sampler)
    fields: list[tuple[str, str]] = [
        ("Steps", str(recipe.steps)),
        ("Sampler", sampler),
        ("Schedule type", schedule),
        *_guidance_fields(recipe),
        *([("Eta", number(recipe.eta))] if recipe.eta is not None else []),
        *([("Shift", number(recipe.shift))] if getattr(recipe, "shift", None) is not None else []),
        ("Seed", str(recipe.seed)),
        ("Size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.model_hash:
        fields.append(("Model hash", recipe.model_hash))
    fields.append(("Model", recipe.model_label))
    if recipe.vae:
        fields.append(("VAE", recipe.vae.replace("\\", "/").rsplit("/", 1)[-1]))
    if recipe.clip_skip > 1:
        fields.append(("Clip skip", str(recipe.clip_skip)))
    hashed_embeddings = [(e.name, e.sha256[:12]) for e in recipe.embeddings if e.sha256]
    if hashed_embeddings:
        fields.append(("TI hashes", _hash_list(hashed_embeddings)))
    hashed_loras = [(lo.display_name, lo.a1111_hash) for lo in recipe.loras if lo.a1111_hash]
    if hashed_loras:
        fields.append(("Lora hashes", _hash_list(hashed_loras)))  # type: ignore[arg-type]
    fields += _picture_fields(recipe)
    fields.append(("Version", version))
    tags = lora_tags(recipe.loras)
    lines = [f"{recipe.prompt} {tags}" if tags else recipe.prompt]
    if recipe.negative_prompt:
        lines.append(f"{_NEGATIVE} {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields))
    return "\n".join(lines)


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedParameters:
    """The three parts of a ``parameters`` text, before any meaning is given to them."""

    prompt: str
    negative_prompt: str
    params: dict[str, str]


def _key_start(line: str, start: int, colon: int) -> int | None:
    """Where A1111's key pattern ``\\w[\\w \\-/]+`` ending at ``colon`` starts, else None."""
    k = colon
    while k > start and _KEY_CHARS.match(line[k - 1]):
        k -= 1
    while k < colon and not (line[k].isalnum() or line[k] == "_"):
        k += 1  # the key starts with a word character (leading spaces belong to \s*)
    return k if colon - k >= 2 else None


def _json_value_end(line: str, start: int) -> int | None:
    """End of a JSON string, list or object starting at ``start`` (linear), else None."""
    try:
        _, end = json.JSONDecoder().raw_decode(line, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    return end


def split_params(line: str) -> list[tuple[str, str]]:
    """``key: value, key: "quoted, value", ...`` -> pairs, in one linear pass."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        colon = line.find(":", i)
        if colon < 0:
            break
        key_at = _key_start(line, i, colon)
        if key_at is None:
            i = colon + 1
            continue
        key = line[key_at:colon]
        j = colon + 1
        while j < n and line[j].isspace():
            j += 1
        end: int | None = None
        if j < n and line[j] in '"[{':
            end = _json_value_end(line, j)
            if end is not None and not (end == n or line[end] == ","):
                end = None
        if end is None:
            comma = line.find(",", j)
            end = n if comma < 0 else comma
        value = line[j:end]
        pairs.append((key, unquote(value) if value.startswith('"') else value))
        i = end + 1
    return pairs


def parse_parameters(text: str) -> ParsedParameters:
    """Split a ``parameters`` text the way A1111's PNG Info does (the last line holds the
    settings when it has at least 3 ``key: value`` pairs)."""
    text = text[:MAX_TEXT].replace("\r\n", "\n").rstrip()
    lines = text.split("\n")
    params: dict[str, str] = {}
    if lines:
        pairs = split_params(lines[-1])
        if len(pairs) >= 3:
            params = dict(pairs)
            lines.pop()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if not in_negative and line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):]
            line = line[1:] if line.startswith(" ") else line
        (negative_lines if in_negative else prompt_lines).append(line)
    return ParsedParameters("\n".join(prompt_lines), "\n".join(negative_lines), params)


def take_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float | None]]]:
    """Lift ``<lora:name:w>`` tags out of a prompt: (prompt without them, [(name, weight)]).

    Tags our writer appended (`` <lora:a:1> <lora:b:0.5>`` at the very end) come off exactly;
    tags elsewhere, as other tools write them, are removed and the spacing tidied. A weight
    that is not a number reads as None (the LoRA's default applies).
    """
    found: list[tuple[str, float | None]] = []
    spans: list[tuple[int, int]] = []
    for match in _TAG.finditer(prompt):
        args = match[2].split(":")
        name = args[0].strip()
        weight: float | None = 1.0
        if len(args) > 1:
            try:
                weight = float(args[1].strip())
                if not math.isfinite(weight):
                    weight = None
            except ValueError:
                weight = None
        found.append((name, weight))
        spans.append(match.span())
    if not found:
        return prompt, found
    tail = prompt[spans[0][0]:]
    joined = " ".join(prompt[a:b] for a, b in spans)
    if tail == joined and (spans[0][0] == 0 or prompt[spans[0][0] - 1] == " "):
        return prompt[: max(0, spans[0][0] - 1)] if spans[0][0] else "", found
    cleaned = _TAG.sub(" ", prompt)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
    cleaned = re.sub(r"\s+,", ",", cleaned)
    cleaned = re.sub(r",(?:\s*,)+", ",", cleaned).strip().strip(",").strip()
    return cleaned, found


def parse_hash_list(value: str) -> dict[str, str]:
    """``"a: 0123456789ab, b: ..."`` -> {alias: hash}; A1111 has stripped ``:`` and ``,`` from aliases."""
    out: dict[str, str] = {}
    for part in value.split(","):
        name, sep, digest = part.strip().rpartition(":")
        if sep and name.strip() and digest.strip():
            out[name.strip()] = digest.strip()
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: str | None) -> float | None:
    try:
        number_ = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number_ if math.isfinite(number_) else None


@dataclass(frozen=True)
class ReadParameters:
    """A recipe read from a ``parameters`` text (files not resolved: ``model == ""``).

    ``missing`` names the recipe fields the text did not give (they hold defaults);
    ``extras`` are the settings it has that a recipe has no field for (hires fix, ADetailer,
    ``Civitai resources``...), for importers and for telling people what was left out.
    """

    recipe: Recipe
    missing: tuple[str, ...] = ()
    extras: dict[str, str] = field(default_factory=dict)
    #: The LoRA tags whose weight was not a number (the LoRA's default weight applies).
    default_weights: tuple[str, ...] = ()
    #: An edit's further pictures as the text names them (``Reference images``: short
    #: hashes, in order); the pictures themselves are not in the text.
    references: tuple[str, ...] = ()


def read_parameters(text: str) -> ReadParameters:
    """The recipe in a ``parameters`` text; never raises on any input."""
    parsed = parse_parameters(text)
    params = parsed.params
    prompt, tags = take_lora_tags(parsed.prompt)
    lora_hashes = parse_hash_list(params.get("Lora hashes", ""))
    loras = []
    default_weights = []
    for name, weight in tags:
        if not name:
            continue
        if weight is None:
            default_weights.append(name)
        loras.append(
            LoraRef("", 1.0 if weight is None else weight, name=name, a1111_hash=lora_hashes.get(alias(name, ":,")))
        )
    embeddings = tuple(
        EmbeddingRef("", name, sha256=digest) for name, digest in parse_hash_list(params.get("TI hashes", "")).items()
    )
    missing: list[str] = []
    values: dict[str, object] = {}
    for key, name, convert in (
        ("Steps", "steps", _int),
        ("CFG scale", "cfg_scale", _float),
        ("Seed", "seed", _int),
        ("Clip skip", "clip_skip", _int),
    ):
        value = convert(params.get(key))
        if key == "Clip skip" and value is not None and not 1 <= value <= 12:
            value = None  # A1111 ignores what it cannot use; so does the reader
        if value is None:
            if key != "Clip skip":
                missing.append(name)
        else:
            values[name] = value
    extras_kept: dict[str, str] = {}
    distilled = _float(params.get(DISTILLED))
    if distilled is not None:
        # Forge on FLUX.1: the guidance the model reads is the distilled one (a recipe's
        # cfg_scale there); a CFG above 1 beside it is Forge's extra unconditioned pass,
        # which has no place here, so it is handed on as an extra to be reported.
        cfg = values.pop("cfg_scale", None)
        if cfg not in (None, 1, 1.0):
            extras_kept["CFG scale"] = params["CFG scale"]
        values["cfg_scale"] = distilled
        values["architecture"] = "flux"
        if "cfg_scale" in missing:
            missing.remove("cfg_scale")
    eta = _float(params.get("Eta"))
    if eta is not None:
        values["eta"] = eta
    shift = _float(params.get("Shift"))  # Forge's flow-matching shift
    if shift is not None and shift > 0:
        values["shift"] = shift
    size = params.get("Size", "")
    width, _, height = size.partition("x")
    if _int(width) is not None and _int(height) is not None:
        values["width"], values["height"] = _int(width), _int(height)
    else:
        missing.append("size")
    if "Sampler" in params:
        values["sampler"] = join_sampler(params["Sampler"].strip(), params.get("Schedule type"))
        if values.get("architecture") == "flux" and values["sampler"] == "Euler Simple":
            # Forge's FLUX preset: Euler on evenly spaced, shifted flow-matching sigmas, which is
            # FLUX's one sampler here (FluxPipeline's flow-matching Euler with the same shift).
            values["sampler"] = "Euler"
    else:
        missing.append("sampler")
    if not params.get("Model") and not params.get("Model hash"):
        missing.append("model")
    recipe = Recipe(
        model="",
        model_name=params.get("Model", "").strip(),
        model_hash=params.get("Model hash", "").strip(),
        prompt=prompt,
        negative_prompt=parsed.negative_prompt,
        loras=tuple(loras),
        embeddings=embeddings,
        vae=params.get("VAE", "").strip(),
        **values,  # type: ignore[arg-type]
        **_read_picture_fields(params),  # type: ignore[arg-type]
    )
    extras = {k: v for k, v in params.items() if k not in _USED} | extras_kept
    references = tuple(
        part.strip().lower() for part in params.get(REFERENCES, "").split(",")
        if re.fullmatch(r"[0-9a-fA-F]{6,64}", part.strip())
    )  # fmt: skip
    return ReadParameters(recipe, tuple(missing), extras, tuple(default_weights), references)


def carried(recipe: Recipe) -> Recipe:
    """What of ``recipe`` survives :func:`write_parameters` then :func:`read_parameters`:
    no file paths, one image, the VAE by file name, hashes as A1111 shortens them."""
    return dataclasses.replace(
        recipe,
        model="",
        model_name=recipe.model_label,
        count=1,
        loras=tuple(
            LoraRef("", lo.weight + 0.0, name=alias(lo.display_name, ":<>"), a1111_hash=lo.a1111_hash)
            for lo in recipe.loras
        ),
        embeddings=tuple(
            EmbeddingRef("", alias(e.name, ":,"), e.sha256[:12]) for e in recipe.embeddings if e.sha256
        ),
        vae=recipe.vae.replace("\\", "/").rsplit("/", 1)[-1],
        cfg_scale=recipe.cfg_scale + 0.0 if recipe.guidance_kind != "none" else 1.0,
        prediction_type="",
        # Only Forge's Distilled CFG Scale says what the model was (FLUX), not which variant.
        architecture="flux" if recipe.guidance_kind == "distilled" else "",
        variant="",
        # The text names no input image; a strength is written only where one was used.
        init_image="",
        init_image_source="",
        references=(),
        reference_sources=(),
        strength=recipe.strength if recipe.init_image else Recipe.strength,
        resize_mode=recipe.resize_mode if recipe.init_image else Recipe.resize_mode,
        hires_upscaler=(recipe.hires_upscaler or "Lanczos") if recipe.hires_scale else recipe.hires_upscaler,
        hires_strength=recipe.hires_strength if recipe.hires_scale else Recipe.hires_strength,
        hires_steps=recipe.hires_steps if recipe.hires_scale else Recipe.hires_steps,
    )


__all__ = [
    "DISTILLED",
    "MAX_TEXT",
    "REFERENCES",
    "ParsedParameters",
    "ReadParameters",
    "alias",
    "carried",
    "file_stem",
    "join_sampler",
    "lora_tags",
    "number",
    "parse_hash_list",
    "parse_parameters",
    "quote",
    "read_parameters",
    "split_params",
    "split_sampler",
    "take_lora_tags",
    "unquote",
    "write_parameters",
]
