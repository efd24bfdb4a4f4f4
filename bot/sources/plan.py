"""Everything checked about a Civitai version before a single byte of it is downloaded.

:func:`plan_fetch` is pure: given what Civitai says about a version, this server's models,
settings and disk use, and the operator's limits, it returns a :class:`FetchPlan` (which file,
where it goes, what it will be registered as) or raises :class:`FetchRefused` listing *every*
reason at once, each with what to do, as ``/imagine``'s validation does.

The engine checks the file again once it has it (sha256, safetensors header, kind): Civitai's
metadata decides whether a download is worth starting, the bytes decide what gets registered.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.registry.models import ModelEntry, NsfwPolicy, ServerSettings
from bot.registry.text import MAX_NAME_LENGTH, name_key
from bot.request.rules import variant_mismatch
from bot.sources.civitai import CivitaiFile, CivitaiVersion
from bot.sources.refs import SourceRef
from engine import arch as architectures
from engine.families import family_label
from engine.protocol import architecture_label

#: Civitai ``model.type`` (lower case) -> what Atelier registers it as.
FETCHABLE_TYPES: dict[str, Literal["lora", "embedding"]] = {
    "lora": "lora", "locon": "lora", "lycoris": "lora", "dora": "lora", "textualinversion": "embedding",
}  # fmt: skip

def base_model_of(base_model: str) -> tuple[str, str]:
    """``"SDXL 1.0"`` -> ``("sdxl", "sdxl")``; ``"Pony"`` -> ``("sdxl", "pony")``: the names
    each architecture module claims (:func:`engine.arch.from_base_model`)."""
    architecture, _variant, family = architectures.from_base_model(base_model)
    return architecture, family


class FetchRefused(Exception):
    """Why a version may not be fetched here: one sentence per reason, each saying what to do."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__(" ".join(reasons))
        self.reasons = tuple(reasons)

    def as_text(self, what: str = "This can't be fetched") -> str:
        if len(self.reasons) == 1:
            return f"{what}: {self.reasons[0]}"
        return f"{what}:\n" + "\n".join(f"• {r}" for r in self.reasons)


@dataclass(frozen=True)
class Limits:
    """The operator's limits and what this server already used of them."""

    max_file_bytes: int
    quota_bytes: int
    used_bytes: int = 0


@dataclass(frozen=True)
class FetchPlan:
    version: CivitaiVersion
    file: CivitaiFile
    kind: Literal["lora", "embedding"]
    architecture: str
    family: str
    nsfw: bool
    #: Where the engine writes it, relative to its LoRA folder.
    path: str
    #: The registry name it gets.
    name: str
    #: Warnings for the admin (another family, NSFW marking, another file than the primary).
    notes: tuple[str, ...] = ()
    #: The variant Civitai's baseModel names ("Flux.1 S" -> "schnell"), or None.
    variant: str | None = None


def size_text(size: int) -> str:
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_FORBIDDEN = re.compile(r"[:<>]+")


def destination(folder: str, version: CivitaiVersion, file: CivitaiFile) -> str:
    """``civitai/135931-pixel_art_v2.safetensors``: the version id keeps names from colliding."""
    stem = file.name[: -len(".safetensors")] if file.name.lower().endswith(".safetensors") else file.name
    safe = _UNSAFE_NAME.sub("_", stem).strip("._") or "lora"
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    return f"{prefix}{version.id}-{safe[:80]}.safetensors"


def registry_name(version: CivitaiVersion, wanted: str | None, taken: Collection[str]) -> str | None:
    """The admin's name, else the model's name (then with the version's, if taken); None when
    every candidate is taken."""
    def clean(text: str) -> str:
        return " ".join(_NAME_FORBIDDEN.sub(" ", text).split())[:MAX_NAME_LENGTH].strip()

    keys = {name_key(t) for t in taken}
    candidates = [wanted] if wanted else [version.model_name, f"{version.model_name} {version.name}"]
    for candidate in candidates:
        name = clean(candidate or "")
        if name and name_key(name) not in keys:
            return name
    return None


def pick_file(version: CivitaiVersion, ref: SourceRef) -> tuple[CivitaiFile | None, str | None]:
    """The file to fetch and a note, or (None, reason)."""
    files = list(version.files)
    if not files:
        return None, f"Civitai lists no file for version {version.id}."
    if ref.file_id is not None:
        chosen = next((f for f in files if f.id == ref.file_id), None)
        if chosen is None:
            return None, f"Version {version.id} has no file {ref.file_id}; drop the `+{ref.file_id}` to take its primary file."
        return chosen, None
    if ref.kind == "hash" and ref.hash:
        chosen = next((f for f in files if f.matches_hash(ref.hash)), None)
        if chosen is not None:
            return chosen, None
    models = [f for f in files if f.type in ("Model", "Negative")]
    primary = next((f for f in files if f.primary), None) or (models[0] if models else files[0])
    if not primary.is_safetensors:
        alternative = next((f for f in models if f.is_safetensors), None)
        if alternative is not None:
            return alternative, f"Its primary file `{primary.name}` is not safetensors; fetching `{alternative.name}` instead."
    return primary, None


def plan_fetch(
    version: CivitaiVersion,
    *,
    ref: SourceRef,
    models: Sequence[ModelEntry],
    settings: ServerSettings,
    folder: str,
    limits: Limits,
    taken_names: Collection[str] = (),
    name: str | None = None,
    runnable: Collection[str] | None = None,
) -> FetchPlan:
    """The plan for fetching ``version`` into this server, or FetchRefused with every reason.

    ``runnable``: the architectures the engine says it runs (None: it did not say); a version
    made for another is refused as one no model here could ever use, not one waiting for a model.
    """
    reasons: list[str] = []
    notes: list[str] = []
    what = f"**{version.model_name or 'This resource'}**"

    kind = FETCHABLE_TYPES.get(version.model_type.lower())
    if kind is None:
        if version.model_type.lower() == "checkpoint":
            reasons.append(
                f"{what} is a checkpoint (a full model), not a LoRA. Models are added by the bot's "
                "operator to the model folder and registered with `/model add`."
            )
        else:
            reasons.append(
                f"{what} is a {version.model_type or 'resource of unknown type'} on Civitai; `/lora add` fetches "
                "LoRAs (LoRA, LoCon, DoRA) and textual-inversion embeddings only."
            )
    if version.status and version.status != "Published":
        reasons.append(f"Version {version.id} is {version.status.lower()} on Civitai, not published; pick a published version.")

    file, note = pick_file(version, ref)
    if note and file is None:
        reasons.append(note)
    elif note:
        notes.append(note)
    if file is not None:
        if file.is_archive:
            reasons.append(
                f"Its file `{file.name}` is an archive: Atelier never unpacks archives (they can hide "
                "other formats). Pick a version whose file is a single `.safetensors`."
            )
        elif file.is_pickle:
            reasons.append(
                f"Its file `{file.name}` is a pickle ({file.format or 'PickleTensor'}): loading one can run "
                "code, so Atelier only takes `.safetensors`. Ask the creator for a safetensors file."
            )
        elif not file.is_safetensors:
            reasons.append(f"Its file `{file.name}` is not a `.safetensors` file; Atelier loads nothing else.")
        if len(file.sha256) != 64:
            reasons.append(
                f"Civitai lists no SHA256 for `{file.name}`, so the download could not be verified; it is refused."
            )
        if file.size_bytes > limits.max_file_bytes:
            reasons.append(
                f"It is {size_text(file.size_bytes)}, over the {size_text(limits.max_file_bytes)} this bot's "
                "operator allows per file (civitai_max_file_size)."
            )
        elif limits.used_bytes + file.size_bytes > limits.quota_bytes:
            left = max(0, limits.quota_bytes - limits.used_bytes)
            reasons.append(
                f"It is {size_text(file.size_bytes)} and this server has {size_text(left)} left of its "
                f"{size_text(limits.quota_bytes)} download quota; ask the bot's operator to raise "
                "civitai_guild_quota or to clear old downloads."
            )

    architecture, variant, family = architectures.from_base_model(version.base_model)
    served = sorted({m.architecture for m in models if m.enabled})
    if not served:
        reasons.append("This server has no models yet, so nothing could use it: register a model with `/model add` first.")
    elif architecture == "unknown":
        reasons.append(
            f"Civitai says it was made for `{version.base_model or 'an unknown base model'}`, which Atelier "
            f"cannot run; this server's models are {', '.join(architecture_label(a) for a in served)}."
        )
    elif runnable is not None and architecture not in runnable:
        runs = [architecture_label(a) for a in runnable]
        runs_text = runs[0] if len(runs) == 1 else ", ".join(runs[:-1]) + " and " + runs[-1]
        reasons.append(
            f"It was made for {architecture_label(architecture)} (Civitai: {version.base_model}), and this "
            f"bot's engine runs {runs_text} models only, so no model here could use it: pick a version made "
            f"for {' or '.join(runs)}."
        )
    elif architecture not in served:
        reasons.append(
            f"It was made for {architecture_label(architecture)} (Civitai: {version.base_model}), but this "
            f"server's models are {', '.join(architecture_label(a) for a in served)}: on them it would do "
            f"nothing. Register a {architecture_label(architecture)} model first, or pick a version made for yours."
        )
    elif family != "unknown":
        same = [m for m in models if m.enabled and m.architecture == architecture]
        known = [m for m in same if m.family != "unknown"]
        if known and not any(m.family == family for m in known):
            notes.append(
                f"It was trained on {family_label(family)}; this server's {architecture_label(architecture)} "
                f"models are {', '.join(sorted({family_label(m.family) for m in known}))}, so it may have little "
                "effect on them."
            )

    if variant is not None and architecture in served:
        notes.extend(_variant_notes(version.base_model, architecture, variant, models))

    if version.nsfw:
        if settings.nsfw_policy is NsfwPolicy.NEVER:
            reasons.append(
                "Civitai rates it NSFW (R or above) and this server's NSFW policy is `never`; an admin can "
                "change that with `/settings nsfw_policy`."
            )
        else:
            notes.append("Civitai rates it NSFW: it is marked NSFW here, so it only works where NSFW is allowed.")

    chosen_name = registry_name(version, name, taken_names)
    if chosen_name is None:
        reasons.append(
            f"The name `{name or version.model_name}` is taken in this server; give another with `name:`."
            if name or version.model_name
            else "Civitai gives it no name; give one with `name:`."
        )
    if reasons or file is None or kind is None or chosen_name is None:
        raise FetchRefused(reasons)
    return FetchPlan(
        version=version,
        file=file,
        kind=kind,
        architecture=architecture,
        family=family,
        nsfw=version.nsfw,
        path=destination(folder, version, file),
        name=chosen_name,
        notes=tuple(notes),
        variant=variant,
    )


def _variant_notes(base_model: str, architecture: str, variant: str, models: Sequence[ModelEntry]) -> list[str]:
    """A warning when every model here of that architecture whose variant is known is another
    variant than the one Civitai says the LoRA was trained on (a Flux.1 S LoRA, dev models)."""
    known = [m for m in models if m.enabled and m.architecture == architecture and m.variant]
    if not known or any(m.variant == variant for m in known):
        return []
    why = variant_mismatch(architecture, variant, known[0].variant)
    if why is None:
        return []
    names = ", ".join(f"`{m.name}`" for m in known[:3])
    return [f"Civitai says it was made for {base_model}; this server's {architecture_label(architecture)} "
            f"models ({names}) are another variant. On `{known[0].name}`, {why}."]  # fmt: skip
