"""The registry's records: plain frozen dataclasses, free of SQL and Discord.

Everything the bot reads from the registry comes back as one of these, so the front end
never touches rows. Times are Unix seconds (float, UTC).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from engine import arch as architectures
from engine.protocol import ARCHITECTURES, Architecture, FileInfo

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "AlreadyExists",
    "AuditEntry",
    "Category",
    "Choice",
    "EmbeddingEntry",
    "ImageCheck",
    "LoraEntry",
    "ModelEntry",
    "NotFound",
    "NsfwPolicy",
    "PostRecord",
    "RecipeUse",
    "RegistryError",
    "SavedRecipe",
    "ServerSettings",
    "SearchSort",
]


class RegistryError(ValueError):
    """A request the registry refuses; ``str(error)`` is a sentence to show the admin as is."""


class NotFound(RegistryError):
    """The named model, LoRA, recipe or post does not exist in this server."""


class AlreadyExists(RegistryError):
    """A name (compared case-insensitively) is already taken in this server."""


class Category(enum.StrEnum):
    CHARACTER = "character"
    STYLE = "style"
    POSE = "pose"
    DETAIL = "detail"
    OUTFIT = "outfit"
    CONCEPT = "concept"
    SPEED = "speed"
    OTHER = "other"


class NsfwPolicy(enum.StrEnum):
    #: NSFW models and LoRAs only in channels Discord marks age-restricted (the default).
    NSFW_CHANNELS = "nsfw_channels"
    #: NSFW models and LoRAs are refused everywhere.
    NEVER = "never"
    #: The admin takes responsibility: NSFW entries work in every channel.
    ANYWHERE = "anywhere"


class ImageCheck(enum.StrEnum):
    """What happens to an image the classifier flags where NSFW is not allowed (bot.operator.safety)."""

    WITHHOLD = "withhold"
    SPOILER = "spoiler"
    OFF = "off"


SearchSort = Literal["newest", "most_used", "name"]


@dataclass(frozen=True)
class Choice:
    """One autocomplete choice: ``name`` is the label (≤ 100 chars), ``value`` what is submitted."""

    name: str
    value: str


@dataclass(frozen=True)
class ModelEntry:
    """A base model a server may generate with."""

    name: str
    architecture: Architecture
    #: Path relative to the engine's model folder.
    file: str
    sha256: str | None = None
    autov2: str | None = None
    #: sha256 of the bytes after the safetensors header, first 12 hex (SwarmUI and Civitai's
    #: AutoV3 hash tensors only); None for entries registered before it was recorded.
    a1111_hash: str | None = None
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 20
    default_cfg: float = 7.0
    default_sampler: str = "DPM++ 2M Karras"
    default_negative: str = ""
    description: str = ""
    nsfw: bool = False
    enabled: bool = True
    #: Channels that may use the model; empty means every channel.
    allowed_channel_ids: frozenset[int] = frozenset()
    added_by: int = 0
    added_at: float = 0.0
    id: int | None = None
    #: The model family (``engine.families``): Pony, Illustrious, ... or "unknown".
    family: str = "unknown"
    #: Clip skip used when a request gives none (anime SD 1.5 models usually want 2).
    default_clip_skip: int = 1
    #: "" = as the file says; "epsilon", "v_prediction", "v_prediction_ztsnr" override it.
    prediction_type: str = ""
    #: A VAE ``.safetensors`` file in the engine's model folder (e.g. the fp16-fix SDXL VAE);
    #: empty: the model's own VAE.
    vae: str = ""
    #: Its variant within the architecture (FLUX.1 "dev", "schnell", "fill"), as its file
    #: shows it; None where the architecture has none or it is not known. Validation applies
    #: the variant's rules (:mod:`bot.request.rules`).
    variant: str | None = None
    #: The sampling profile (:mod:`engine.profiles` id) a distilled checkpoint needs; None: none.
    speed_profile: str | None = None
    #: What the server's fast mode uses with this model: a speed LoRA's name (added to the
    #: stack) or a faster model's name (used instead); None: fast mode leaves it as it is.
    fast_with: str | None = None

    @classmethod
    def from_file_info(
        cls, info: FileInfo, *, name: str | None = None, **overrides: Any
    ) -> ModelEntry:
        """Prefill from the engine's inspection; the default size, and for an architecture with
        its own (FLUX: steps, guidance, sampler) those defaults, come from its module.

        ``variant`` in ``overrides`` (the admin's, e.g. "kontext": a Kontext file has dev's
        keys, so inspection says "dev") replaces the file's, and its defaults are used."""
        if info.kind != "checkpoint":
            raise RegistryError(not_a_message(info, "a base model", "/model add"))
        spec = architectures.get(info.architecture)
        width, height = spec.size.default if spec is not None and spec.size is not None else (512, 512)
        values: dict[str, Any] = {
            "name": name or info.output_name or _stem(info.path),
            "architecture": info.architecture,
            "file": info.path,
            "sha256": info.sha256,
            "autov2": info.autov2,
            "a1111_hash": info.a1111_hash,
            "default_width": width,
            "default_height": height,
            "family": info.family,
            "variant": info.variant if spec is not None and spec.variant(info.variant) else None,
            "speed_profile": detected_profile(info, "checkpoint", info.variant),
        }
        if overrides.get("variant"):
            values["variant"] = overrides["variant"]
        if spec is not None and (spec.guidance.kind != "cfg" or spec.dit is not None):
            # SD keeps the entry's long-standing defaults (which its module's equal); others
            # start from theirs: FLUX dev 28 steps at guidance 3.5, schnell 4 without, and a
            # diffusion transformer with true CFG (Qwen-Image: 50 steps at 4) its authors' own.
            variant = values["variant"] if spec.variant(values["variant"]) else None
            values.update(
                default_steps=spec.steps_for(variant),
                default_cfg=spec.guidance_for(variant).default or 1.0,
                default_sampler=spec.default_sampler,
            )
        values.update(overrides)
        return cls(**values)

    def allowed_in(self, channel_id: int) -> bool:
        return not self.allowed_channel_ids or channel_id in self.allowed_channel_ids


@dataclass(frozen=True)
class LoraEntry:
    """A LoRA registered in one server."""

    name: str
    architecture: Architecture
    #: Path relative to the engine's LoRA folder.
    file: str
    category: Category = Category.OTHER
    trigger_words: tuple[str, ...] = ()
    default_weight: float = 1.0
    recommended_min: float = 0.0
    recommended_max: float = 1.0
    sha256: str | None = None
    #: Civitai's AutoV2 hash: the first 10 hex digits of the sha256, upper case.
    autov2: str | None = None
    #: AUTOMATIC1111's LoRA hash (what ``Lora hashes`` carries): sha256 of the bytes after the
    #: safetensors header, first 12 hex. None for entries registered before it was recorded.
    a1111_hash: str | None = None
    #: A Civitai AIR (``urn:air:sdxl:lora:civitai:120096@135931``) or an http(s) URL.
    source: str | None = None
    description: str = ""
    nsfw: bool = False
    preview_url: str | None = None
    added_by: int = 0
    added_at: float = 0.0
    uses: int = 0
    enabled: bool = True
    id: int | None = None
    family: str = "unknown"
    #: The file's maths ("lora", "locon", "loha", "lokr", "dora", ...), as inspection read it.
    lora_format: str | None = None
    rank: int | None = None
    #: The clip skip it was trained with (kohya ``ss_clip_skip``), if the file says.
    trained_clip_skip: int | None = None
    #: The variant of its architecture it was trained on (FLUX.1 "dev", "schnell",
    #: "kontext"), from Civitai's baseModel or the file's model spec; None if not known.
    variant: str | None = None
    #: Civitai's ``baseModel`` of the version it was fetched from ("Flux.1 S", "Pony").
    base_model: str | None = None
    #: The sampling profile (:mod:`engine.profiles` id) of a speed LoRA; None: not one.
    speed_profile: str | None = None

    @classmethod
    def from_file_info(
        cls,
        info: FileInfo,
        *,
        name: str | None = None,
        category: Category | str = Category.OTHER,
        **overrides: Any,
    ) -> LoraEntry:
        """Prefill architecture, hashes, trigger words and a name from the engine's inspection.

        The admin then confirms or corrects; anything in ``overrides`` wins.
        """
        if info.kind != "lora":
            raise RegistryError(not_a_message(info, "a LoRA", "/lora add"))
        spec = architectures.get(info.architecture)
        values: dict[str, Any] = {
            "name": name or info.output_name or _stem(info.path),
            "architecture": info.architecture,
            "file": info.path,
            "category": Category(category),
            "trigger_words": tuple(info.trigger_words[:10]),
            "sha256": info.sha256,
            "autov2": info.autov2,
            "a1111_hash": info.a1111_hash,
            "family": info.family,
            "lora_format": info.lora_format,
            "rank": info.rank,
            "trained_clip_skip": info.clip_skip,
            # sd-scripts' model spec names FLUX.1's variant; FLUX.2's widths name the Klein size.
            "variant": metadata_variant(info.architecture, info.metadata)
            or (info.variant if spec is not None and info.variant in spec.variants else None),
        }
        values["speed_profile"] = detected_profile(
            info, "lora", overrides.get("variant", values["variant"]), overrides.get("base_model")
        )
        values.update(overrides)
        from engine import profiles

        speed = profiles.get(values["speed_profile"])
        if speed is not None and speed.lora_weight is not None and "default_weight" not in overrides:
            values["default_weight"] = speed.lora_weight  # Hyper-FLUX: 0.125, as its card fuses it
        return cls(**values)

    def with_changes(self, **changes: Any) -> LoraEntry:
        return replace(self, **changes)


@dataclass(frozen=True)
class EmbeddingEntry:
    """A textual-inversion embedding members call by name in a prompt or negative."""

    name: str
    architecture: Architecture
    #: Path relative to the engine's embedding folder.
    file: str
    family: str = "unknown"
    sha256: str | None = None
    autov2: str | None = None
    vectors: int | None = None
    description: str = ""
    nsfw: bool = False
    enabled: bool = True
    added_by: int = 0
    added_at: float = 0.0
    id: int | None = None
    #: A Civitai AIR or an http(s) URL, as for LoRAs.
    source: str | None = None

    @classmethod
    def from_file_info(cls, info: FileInfo, *, name: str | None = None, **overrides: Any) -> EmbeddingEntry:
        if info.kind != "embedding":
            raise RegistryError(not_a_message(info, "a textual-inversion embedding", "/embedding add"))
        values: dict[str, Any] = {
            "name": name or _stem(info.path),
            "architecture": info.architecture,
            "file": info.path,
            "family": info.family,
            "sha256": info.sha256,
            "autov2": info.autov2,
            "vectors": info.vectors,
        }
        values.update(overrides)
        return cls(**values)


def detected_profile(info: FileInfo, kind: str, variant: str | None, base_model: str | None = None) -> str | None:
    """The id of the sampling profile proposed for a file being registered (its metadata's
    names, its file name, Civitai's ``baseModel``: :func:`engine.profiles.detect`), if a
    model of the file's architecture and variant can run it; the admin sees it on the card
    and may change it, as with the trigger words read from the file."""
    from engine import profiles

    metadata = info.metadata if isinstance(info.metadata, Mapping) else None
    found = profiles.detect(info.path, metadata, base_model, kind=kind)
    if found is None or found.profile.cannot_run(info.architecture, variant) is not None:
        return None
    return found.profile.id


def metadata_variant(architecture: str, metadata: Mapping[str, str]) -> str | None:
    """The variant a LoRA's model spec names (sd-scripts writes ``modelspec.architecture``
    as ``flux-1-dev/lora`` or ``flux-1-schnell/lora``), if it is one of its architecture's;
    the tensors of a FLUX LoRA do not tell dev from schnell."""
    spec = architectures.get(architecture)
    text = metadata.get("modelspec.architecture", "") if isinstance(metadata, Mapping) else ""
    if spec is None or not spec.variants or not isinstance(text, str):
        return None
    words = set(re.split(r"[^a-z0-9]+", text.lower()))
    found = [name for name in spec.variants if name in words]
    if len(found) == 1:
        return found[0]
    # musubi-tuner names a Qwen-Image LoRA's model ("Qwen-Image-Edit/lora", "Qwen-Image-Edit-Plus/lora"
    # for -2509), whose words are several variants' at once: read the name as Civitai's base models
    # are read, longest known name first, if it names a variant of this architecture.
    named, variant, _ = architectures.from_base_model(text.split("/")[0])
    return variant if named == architecture and variant in spec.variants else None


#: What each inspected kind is, and where it goes instead.
_KIND_ADVICE = {
    "lora": ("a LoRA", "register it with `/lora add`"),
    "checkpoint": ("a full model (checkpoint)", "register it with `/model add`"),
    "embedding": ("a textual-inversion embedding", "register it with `/embedding add`"),
    "vae": ("a VAE", "it is not registered on its own; a model uses its own VAE (a single-file Qwen-Image or "
            "FLUX.2 model finds it in the models folder's `qwen-image-components/` or `flux2-components/`)"),
    "text_encoder": ("a text encoder", "it is not registered on its own; a single-file model finds it in its "
                     "components folder (`qwen-image-components/`, `flux2-components/`, `zimage-components/`)"),
    "unknown": ("not a file Atelier recognises (no LoRA, model or embedding keys)",
                "check that it is the file you meant, or re-export it"),
}  # fmt: skip


def kind_description(kind: str) -> str:
    """What an inspected kind is, in words ("a full model (checkpoint)", ...)."""
    return _KIND_ADVICE.get(kind, _KIND_ADVICE["unknown"])[0]


def not_a_message(info: FileInfo, wanted: str, command: str) -> str:
    _, advice = _KIND_ADVICE.get(info.kind, _KIND_ADVICE["unknown"])
    return f"`{info.path}` is {kind_description(info.kind)}, not {wanted}, so {command} cannot take it: {advice}."


#: Fields of LoraEntry an admin may change with ``update_lora``.
LORA_EDITABLE = frozenset(
    f.name for f in fields(LoraEntry) if f.name not in ("id", "added_by", "added_at", "uses")
)
#: Fields of ModelEntry an admin may change with ``update_model``.
MODEL_EDITABLE = frozenset(
    f.name for f in fields(ModelEntry) if f.name not in ("id", "added_by", "added_at")
)


@dataclass(frozen=True)
class ServerSettings:
    """Per-server rules applied by validation and by the bot's queue."""

    #: LoRAs in one stack (slots plus inline ``<lora:…>``).
    max_loras: int = 3
    #: Role id -> a higher stack cap for members with that role (the highest applies).
    role_max_loras: Mapping[int, int] = field(default_factory=dict)
    #: Allowed LoRA weights; a negative minimum allows slider LoRAs used in reverse.
    weight_min: float = 0.0
    weight_max: float = 2.0
    prompt_limit: int = 4096
    negative_prompt_limit: int = 4096
    steps_min: int = 1
    steps_max: int = 50
    cfg_min: float = 1.0
    cfg_max: float = 20.0
    #: Per side, in pixels; sides must also be multiples of 8.
    size_min: int = 256
    size_max: int = 2048
    max_count: int = 4
    #: Add a LoRA's missing trigger words to the prompt (True) or report them (False).
    auto_trigger_words: bool = True
    nsfw_policy: NsfwPolicy = NsfwPolicy.NSFW_CHANNELS
    #: Jobs one member may have queued or running at once.
    queue_limit_per_user: int = 2
    #: Jobs the engines work on for one member at once while other members wait.
    active_jobs_per_user: int = 2
    #: Jobs this whole server may have queued or running at once (the bot's own cap may be lower).
    server_queue_limit: int = 200
    #: Roles whose members get twice the share of the server's turns (never the whole queue).
    priority_roles: tuple[int, ...] = ()
    #: Model used when /imagine names none.
    default_model: str | None = None
    #: What happens to an image the classifier flags where NSFW is not allowed (see
    #: bot.operator.safety.ImageCheck): "withhold", "spoiler" or "off".
    image_check: str = "withhold"
    #: Words or phrases refused in prompts (normalised, see bot.operator.safety.clean_blocklist).
    blocked_words: tuple[str, ...] = ()
    #: Roles whose members may have a LoRA fetched from Civitai by writing its AIR in
    #: ``/imagine`` (where the operator allows fetching); empty: nobody (the default).
    fetch_roles: tuple[int, ...] = ()
    #: Fast mode: every /imagine uses each model's ``fast_with`` (a speed LoRA or a faster
    #: model) unless the member asks for ``speed:normal``.
    fast_mode: bool = False

    def max_loras_for(self, role_ids: frozenset[int] | set[int]) -> int:
        """The stack cap for a member: the server's, or the highest of their roles' overrides."""
        caps = [cap for role, cap in self.role_max_loras.items() if role in role_ids]
        return max([self.max_loras, *caps])

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["role_max_loras"] = {str(k): v for k, v in self.role_max_loras.items()}
        data["priority_roles"] = [str(role) for role in self.priority_roles]
        data["nsfw_policy"] = str(self.nsfw_policy)
        data["blocked_words"] = list(self.blocked_words)
        data["fetch_roles"] = [str(r) for r in self.fetch_roles]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerSettings:
        """Unknown keys are ignored and missing ones take defaults, so old rows keep loading."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "role_max_loras" in values:
            values["role_max_loras"] = {int(k): int(v) for k, v in values["role_max_loras"].items()}
        if "nsfw_policy" in values:
            values["nsfw_policy"] = NsfwPolicy(values["nsfw_policy"])
        if "priority_roles" in values:
            values["priority_roles"] = tuple(int(role) for role in values["priority_roles"])
        if "blocked_words" in values:
            values["blocked_words"] = tuple(values["blocked_words"])
        if "fetch_roles" in values:
            values["fetch_roles"] = tuple(int(r) for r in values["fetch_roles"])
        return cls(**values)


@dataclass(frozen=True)
class SavedRecipe:
    id: int
    name: str
    #: Whatever the bot saved, typically ``Recipe.to_json()``.
    recipe: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class RecipeUse:
    """A saved recipe that names a given model, LoRA or embedding."""

    #: The member who saved it (a recipe book entry's author).
    user_id: int
    name: str
    #: In the server's recipe book rather than the member's own saved recipes.
    in_book: bool = False


@dataclass(frozen=True)
class PostRecord:
    """The recipe behind one posted image message, looked up when its buttons are pressed."""

    guild_id: int
    channel_id: int
    message_id: int
    user_id: int
    recipe: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    actor_id: int
    #: e.g. "lora.add", "lora.update", "lora.remove", "model.add", "settings.update".
    action: str
    target: str
    details: dict[str, Any]
    at: float


def _stem(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".safetensors")
