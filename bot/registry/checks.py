"""Checks applied to entries and settings before they are stored.

Each returns a cleaned copy (names normalised, hashes lower-cased, AIRs canonical) or raises
:class:`~bot.registry.models.RegistryError` with a sentence telling the admin what to change.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from bot.registry.models import (
    Category,
    EmbeddingEntry,
    ImageCheck,
    LoraEntry,
    ModelEntry,
    NsfwPolicy,
    RegistryError,
    ServerSettings,
)
from bot.registry.text import (
    MAX_DESCRIPTION_LENGTH,
    check_architecture,
    clean_blocklist,
    clean_hash,
    clean_name,
    clean_source,
    clean_text,
    clean_trigger_words,
    clean_url,
    strip_invisible,
)
from engine import arch as architectures
from engine.families import FAMILIES, family_label
from engine.paths import PICKLE_SUFFIXES
from engine.prediction import PREDICTION_LABELS
from engine.protocol import PREDICTION_TYPES
from engine.validation import DEFAULT_LIMITS

#: Weights beyond this are never meaningful, whatever a server allows.
WEIGHT_LIMIT = 10.0
#: The most LoRAs any server may allow in one stack (the engine keeps them all loaded).
HARD_MAX_LORAS = DEFAULT_LIMITS.max_loras
# Every bound a server or a model default may be set to is the engine's own limit, so the
# bot never promises what the engine then refuses (one source of truth: RecipeLimits).
MAX_STEPS = DEFAULT_LIMITS.max_steps
MAX_CFG = DEFAULT_LIMITS.max_cfg
MIN_SIDE = DEFAULT_LIMITS.min_side
MAX_SIDE = DEFAULT_LIMITS.max_side


def clean_file(path: str, *, allow_folder: bool = False) -> str:
    """A path relative to the engine's folder: no absolute paths, no ``..``, only safetensors.

    Models may also be diffusers pipeline folders (``allow_folder``): a last part without a
    weight-file suffix. The engine checks that such a folder holds only safetensors weights.
    """
    text = strip_invisible(str(path)).strip().replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or ":" in parts[0]:
        raise RegistryError(
            f"{path!r} is not a path inside the engine's folder; pick one of the files "
            "the engine lists (relative, without '..')."
        )
    last = parts[-1].lower()
    folder_ok = allow_folder and not last.endswith(tuple(PICKLE_SUFFIXES))
    if not last.endswith(".safetensors") and not folder_ok:
        raise RegistryError(
            f"{path!r} is not a .safetensors file; Atelier only loads safetensors "
            "(other formats can run code when loaded)."
        )
    return "/".join(parts)


def _finite(
    value: object, what: str, low: float = -WEIGHT_LIMIT, high: float = WEIGHT_LIMIT
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RegistryError(f"The {what} must be a number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise RegistryError(f"The {what} must be a finite number from {low:g} to {high:g}.")
    return number


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RegistryError(
            f"The {what} must be a whole number from {low} to {high}, got {value!r}."
        )
    return value


def clean_family(family: object) -> str:
    if family not in FAMILIES:
        raise RegistryError(
            f"Unknown family {family!r}; use one of "
            + ", ".join(f"{f} ({family_label(f)})" for f in FAMILIES)
            + "."
        )
    return str(family)


def clean_clip_skip(value: object, what: str = "clip skip") -> int:
    return _int(value, what, 1, 12)


def clean_prediction(value: object) -> str:
    if value not in PREDICTION_TYPES:
        raise RegistryError(
            f"Unknown prediction type {value!r}; use one of "
            + ", ".join(f"{p or 'auto'} ({PREDICTION_LABELS[p]})" for p in PREDICTION_TYPES)
            + "."
        )
    return str(value)


def clean_embedding(entry: EmbeddingEntry) -> EmbeddingEntry:
    return replace(
        entry,
        name=clean_name(entry.name, what="embedding name"),
        architecture=check_architecture(entry.architecture),  # type: ignore[arg-type]
        family=clean_family(entry.family),
        file=clean_file(entry.file),
        sha256=clean_hash(entry.sha256, length=64, what="sha256"),
        autov2=clean_hash(entry.autov2, length=10, what="AutoV2 hash", upper=True),
        description=clean_text(entry.description, what="description"),
        nsfw=bool(entry.nsfw),
        enabled=bool(entry.enabled),
        source=clean_source(entry.source, kind="embedding", architecture=entry.architecture),
    )


def clean_lora(entry: LoraEntry) -> LoraEntry:
    architecture = check_architecture(entry.architecture)
    try:
        category = Category(entry.category)
    except ValueError:
        raise RegistryError(
            f"Unknown category {entry.category!r}; use one of {', '.join(c.value for c in Category)}."
        ) from None
    default = _finite(entry.default_weight, "default weight")
    low = _finite(entry.recommended_min, "recommended minimum weight")
    high = _finite(entry.recommended_max, "recommended maximum weight")
    if low > high:
        raise RegistryError(
            f"The recommended range {low:g} to {high:g} is upside down; put the smaller number first."
        )
    return replace(
        entry,
        name=clean_name(entry.name, what="LoRA name"),
        architecture=architecture,  # type: ignore[arg-type]
        category=category,
        file=clean_file(entry.file),
        trigger_words=clean_trigger_words(entry.trigger_words),
        default_weight=default,
        recommended_min=low,
        recommended_max=high,
        sha256=clean_hash(entry.sha256, length=64, what="sha256"),
        autov2=clean_hash(entry.autov2, length=10, what="AutoV2 hash", upper=True),
        a1111_hash=clean_hash(entry.a1111_hash, length=12, what="A1111 LoRA hash"),
        source=clean_source(entry.source, kind="lora", architecture=architecture),
        description=clean_text(entry.description, what="description", limit=MAX_DESCRIPTION_LENGTH),
        nsfw=bool(entry.nsfw),
        enabled=bool(entry.enabled),
        preview_url=clean_url(entry.preview_url, what="preview image"),
        family=clean_family(entry.family),
        variant=clean_variant(entry.variant, architecture),
        base_model=clean_text(entry.base_model, what="Civitai base model", limit=100) or None,
        speed_profile=clean_speed_profile(entry.speed_profile, "lora", architecture, entry.variant),
    )


def clean_variant(variant: str | None, architecture: str) -> str | None:
    """None, or one of the architecture's variants (FLUX.1 "dev", "schnell", ...)."""
    if variant is None or variant == "":
        return None
    spec = architectures.get(architecture)
    names = tuple(spec.variants) if spec is not None else ()
    if not isinstance(variant, str) or variant not in names:
        known = f"use one of {', '.join(names)}" if names else f"{architectures.label(architecture)} has none"
        raise RegistryError(f"Unknown variant {variant!r}: {known}, or leave it empty.")
    return variant


def clean_model(entry: ModelEntry) -> ModelEntry:
    architecture = check_architecture(entry.architecture)
    for side, what in (
        (entry.default_width, "default width"),
        (entry.default_height, "default height"),
    ):
        _int(side, what, MIN_SIDE, MAX_SIDE)
        if side % 8:
            raise RegistryError(
                f"The {what} {side} must be a multiple of 8, e.g. {side - side % 8}."
            )
    channels = entry.allowed_channel_ids
    if isinstance(channels, (int, str)) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in channels
    ):
        raise RegistryError("Allowed channels must be a list of channel ids.")
    return replace(
        entry,
        name=clean_name(entry.name, what="model name"),
        architecture=architecture,  # type: ignore[arg-type]
        file=clean_file(entry.file, allow_folder=True),
        sha256=clean_hash(entry.sha256, length=64, what="sha256"),
        autov2=clean_hash(entry.autov2, length=10, what="AutoV2 hash", upper=True),
        a1111_hash=clean_hash(entry.a1111_hash, length=12, what="tensor hash"),
        default_steps=_int(entry.default_steps, "default steps", 1, MAX_STEPS),
        default_cfg=_finite(entry.default_cfg, "default CFG", 0.0, MAX_CFG),
        default_sampler=clean_name(entry.default_sampler, what="default sampler"),
        default_negative=clean_text(
            entry.default_negative, what="default negative prompt", limit=4096
        ),
        description=clean_text(entry.description, what="description"),
        nsfw=bool(entry.nsfw),
        enabled=bool(entry.enabled),
        allowed_channel_ids=frozenset(channels),
        family=clean_family(entry.family),
        default_clip_skip=clean_clip_skip(entry.default_clip_skip, "default clip skip"),
        prediction_type=clean_prediction(entry.prediction_type),
        vae=clean_file(entry.vae) if entry.vae else "",
        variant=clean_variant(entry.variant, architecture),
        speed_profile=clean_speed_profile(entry.speed_profile, "checkpoint", architecture, entry.variant),
        fast_with=clean_text(entry.fast_with, what="fast-mode LoRA or model", limit=100) or None,
    )


def clean_speed_profile(profile_id: str | None, kind: str, architecture: str, variant: str | None) -> str | None:
    """None, or a shipped profile (:mod:`engine.profiles`) of ``kind`` that a model of
    ``architecture``/``variant`` can run."""
    from engine import profiles

    if profile_id is None or profile_id == "":
        return None
    profile = profiles.get(profile_id) if isinstance(profile_id, str) else None
    if profile is None:
        raise RegistryError(f"Unknown sampling profile {str(profile_id)[:60]!r}: pick one from the list, or `none`.")
    if kind == "lora" and profile.kind != "lora":
        raise RegistryError(f"{profile.label} is the profile of a distilled checkpoint, not of a LoRA.")
    why = profile.cannot_run(architecture, variant)
    if why is not None:
        raise RegistryError(f"{why}: pick another profile, or `none`.")
    return profile.id


def clean_settings(settings: ServerSettings) -> ServerSettings:
    """Every bound checked, including that each minimum is below its maximum."""
    s = settings
    _int(s.max_loras, "stack cap (max LoRAs)", 0, HARD_MAX_LORAS)
    roles: dict[int, int] = {}
    for role, cap in dict(s.role_max_loras).items():
        if isinstance(role, bool) or not isinstance(role, int):
            raise RegistryError(f"Role ids must be numbers, got {role!r}.")
        roles[role] = _int(cap, f"stack cap for role {role}", 0, HARD_MAX_LORAS)
    weight_min = _finite(s.weight_min, "minimum LoRA weight")
    weight_max = _finite(s.weight_max, "maximum LoRA weight")
    _order(weight_min, weight_max, "LoRA weight")
    _int(s.prompt_limit, "prompt length limit", 1, 6000)
    _int(s.negative_prompt_limit, "negative prompt length limit", 0, 6000)
    _int(s.steps_min, "minimum steps", 1, MAX_STEPS)
    _int(s.steps_max, "maximum steps", 1, MAX_STEPS)
    _order(s.steps_min, s.steps_max, "steps")
    cfg_min = _finite(s.cfg_min, "minimum CFG", 0.0, MAX_CFG)
    cfg_max = _finite(s.cfg_max, "maximum CFG", 0.0, MAX_CFG)
    _order(cfg_min, cfg_max, "CFG")
    for value, what in ((s.size_min, "minimum size"), (s.size_max, "maximum size")):
        _int(value, what, MIN_SIDE, MAX_SIDE)
        if value % 8:
            raise RegistryError(f"The {what} {value} must be a multiple of 8.")
    _order(s.size_min, s.size_max, "size")
    _int(s.max_count, "images per request", 1, min(4, DEFAULT_LIMITS.max_count))
    _int(s.queue_limit_per_user, "per-user queue limit", 1, 100)
    _int(s.active_jobs_per_user, "jobs worked on at once per member", 1, 16)
    _int(s.server_queue_limit, "server queue limit", 1, 5000)
    try:
        priority_roles = tuple(sorted({int(role) for role in s.priority_roles}))
    except (TypeError, ValueError):
        raise RegistryError("Priority roles must be role ids.") from None
    if len(priority_roles) > 25:
        raise RegistryError("At most 25 priority roles; remove one first.")
    try:
        policy = NsfwPolicy(s.nsfw_policy)
    except ValueError:
        raise RegistryError(
            f"Unknown NSFW policy {s.nsfw_policy!r}; use one of {', '.join(p.value for p in NsfwPolicy)}."
        ) from None
    default_model = s.default_model
    if default_model is not None:
        default_model = clean_name(default_model, what="default model")
    try:
        image_check = ImageCheck(s.image_check)
    except ValueError:
        raise RegistryError(
            f"Unknown image check {s.image_check!r}; use one of {', '.join(c.value for c in ImageCheck)}."
        ) from None
    fetch_roles = tuple(dict.fromkeys(s.fetch_roles))
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in fetch_roles):
        raise RegistryError("Fetch roles must be role ids.")
    try:
        blocked = clean_blocklist(s.blocked_words)
    except ValueError as exc:
        raise RegistryError(f"The prompt blocklist is refused: {exc}.") from None
    return replace(
        s,
        role_max_loras=roles,
        weight_min=weight_min,
        weight_max=weight_max,
        cfg_min=cfg_min,
        cfg_max=cfg_max,
        auto_trigger_words=bool(s.auto_trigger_words),
        nsfw_policy=policy,
        default_model=default_model,
        priority_roles=priority_roles,
        image_check=image_check.value,
        blocked_words=blocked,
        fetch_roles=fetch_roles,
    )


def _order(low: float, high: float, what: str) -> None:
    if low > high:
        raise RegistryError(f"The {what} minimum ({low:g}) is above the maximum ({high:g}).")


def check_changes(changes: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise RegistryError(
            f"{what} has no editable field {', '.join(unknown)}; editable: {', '.join(sorted(allowed))}."
        )


SETTINGS_FIELDS = frozenset(f.name for f in fields(ServerSettings))
