"""Reading the references people paste: AIRs, Civitai links and file hashes.

Civitai's AIR spec (developer.civitai.com/site/guide/air) is
``urn:air:{ecosystem}:{type}:{source}:{id}[@{version}][+{fileId}][.{format}]``, where the
``urn:`` and ``air:`` prefixes are optional and so are the ecosystem and the type: LoRA APIs
people already use name LoRAs as ``civitai:120096@135931``. Every one of those forms parses
here, as do Civitai's page and download links and the hashes its by-hash endpoint accepts.

Written by hand rather than with Civitai's published regular expression: that expression
lets the version swallow the ``.format`` suffix and cannot tell an ecosystem from a type
when only one of them is given; here the source is found first (it is one of a short known
list), so what comes before it and after it is unambiguous. Pure: no I/O, no Discord.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from engine import arch as architectures


class SourceError(ValueError):
    """Text that is not an AIR, a Civitai link or a hash; ``str(error)`` says what to type.

    Its own class because the registry imports this module (a source is an entry's field):
    ``bot.registry.text`` turns it into a SourceError for the registry's callers."""


#: AIR sources: Civitai model versions, Civitai's R2 file assets, Hugging Face, the orchestrator.
SOURCES = ("civitai", "civitai-r2", "huggingface", "orchestrator")
#: Sources whose ids are Civitai model and version numbers (fetchable through its REST API).
CIVITAI_SOURCES = ("civitai",)

#: Civitai's ecosystems (its ``basemodel.constants`` names, lower case) that no architecture
#: module here claims: known, so an AIR naming one is read, and "unknown" here.
_OTHER_ECOSYSTEMS: dict[str, str] = {
    "sd2": "unknown", "flux2": "unknown", "flux2klein_9b": "unknown", "flux2klein_9b_base": "unknown",
    "flux2klein_4b": "unknown", "flux2klein_4b_base": "unknown",
    "qwen": "unknown", "chroma": "unknown", "hydit1": "unknown", "auraflow": "unknown",
    "hidream": "unknown", "kolors": "unknown", "lumina": "unknown", "pixarta": "unknown",
    "pixarte": "unknown", "zimageturbo": "unknown", "zimagebase": "unknown", "scascade": "unknown",
    "playgroundv2": "unknown", "odor": "unknown", "anima": "unknown", "ponyv7": "unknown",
    "hyv1": "unknown", "wanvideo": "unknown", "ltxv": "unknown", "ltxv2": "unknown",
    "mochi": "unknown", "cogvideox": "unknown", "svd": "unknown", "other": "unknown",
}  # fmt: skip
#: Every Civitai ecosystem, with the registry architecture each runs on: the architecture
#: modules' own (``engine.arch``: ``sd15`` and ``flux`` are spellings seen in older docs and
#: tools), then the rest.
ECOSYSTEM_ARCHITECTURES: dict[str, str] = {
    # A module's own ecosystems win over the list of others, so a new module claims its
    # ecosystems without an edit here.
    **_OTHER_ECOSYSTEMS,
    **{eco: spec.name for spec in architectures.ARCHITECTURES.values() for eco in spec.ecosystems},
}
#: Ecosystems that name a model family within an architecture (``engine.families`` names).
ECOSYSTEM_FAMILIES = {"pony": "pony", "illustrious": "illustrious", "noobai": "noobai", "sd1": "sd15", "sd15": "sd15"}
#: The ecosystem written into a canonical AIR for a file of each registry architecture.
ARCHITECTURE_ECOSYSTEMS = {
    name: eco for name in architectures.ARCHITECTURES if (eco := architectures.ecosystem_of(name))
}
#: AIR types (Civitai's ``typeUrnMap`` plus the older spec's ``model`` and ``hypernet``).
TYPES = (
    "checkpoint", "lora", "lycoris", "locon", "dora", "embedding", "vae", "controlnet", "upscaler",
    "hypernet", "ag", "motion", "model", "wildcards", "workflows", "poses", "detection", "other",
    "unknown",
)  # fmt: skip
#: Types that are LoRA-like networks, which ``/lora add`` registers as LoRAs.
LORA_TYPES = frozenset({"lora", "lycoris", "locon", "dora"})

#: What the parsers accept, shown whenever something else was typed.
ACCEPTED_SHAPES = (
    "Accepted shapes:\n"
    "• an AIR: `urn:air:sdxl:lora:civitai:120096@135931` (the `urn:air:` prefix, the ecosystem and "
    "the type are optional, so `civitai:120096@135931` works; `+fileId` picks one file of a version)\n"
    "• a Civitai link: `https://civitai.com/models/120096?modelVersionId=135931` or "
    "`https://civitai.com/api/download/models/135931`\n"
    "• a file hash: SHA256 (64 hex digits) or AutoV2 (10 hex digits)"
)

_CIVITAI_TAIL = re.compile(r"^(?P<id>\d{1,12})(?:@(?P<version>\d{1,12}))?(?:\+(?P<file>\d{1,12}))?(?:\.(?P<format>[a-z][a-z0-9_-]{0,31}))?$", re.I)  # fmt: skip
_OTHER_TAIL = re.compile(
    r"^(?P<id>[A-Za-z0-9_\-/.]+?)(?:@(?P<version>[A-Za-z0-9_\-/.=,%]+?))?(?:\+(?P<file>\d{1,12}))?"
    r"(?:\.(?P<format>[A-Za-z][A-Za-z0-9_-]{0,31}))?$"
)
_HASH = re.compile(r"^[0-9a-fA-F]+$")
#: Hash lengths Civitai's by-hash endpoint answers: CRC32, AutoV2, AutoV3, SHA256 (or BLAKE3).
HASH_LENGTHS = (8, 10, 12, 64)
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.red", "www.civitai.red"})
_MAX_REF_LENGTH = 1_000


def _refuse(text: str, why: str) -> SourceError:
    shown = text if len(text) <= 120 else text[:119] + "…"
    return SourceError(f"`{shown}` is not {why}. {ACCEPTED_SHAPES}")


@dataclass(frozen=True)
class Air:
    """A parsed AI Resource Name. Missing optional parts are None."""

    ecosystem: str | None
    type: str | None
    source: str
    id: str
    version: str | None = None
    file_id: str | None = None
    format: str | None = None

    @property
    def architecture(self) -> str:
        """The registry architecture of the ecosystem ("unknown" when none was given)."""
        return ECOSYSTEM_ARCHITECTURES.get(self.ecosystem or "", "unknown")

    @property
    def family(self) -> str | None:
        return ECOSYSTEM_FAMILIES.get(self.ecosystem or "")

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What identifies the resource: two spellings of one version have the same key."""
        return (self.source, self.id, self.version)

    @property
    def is_civitai(self) -> bool:
        return self.source in CIVITAI_SOURCES

    @property
    def url(self) -> str | None:
        """The Civitai page, when the AIR points at a Civitai model."""
        if not self.is_civitai:
            return None
        url = f"https://civitai.com/models/{self.id}"
        return f"{url}?modelVersionId={self.version}" if self.version else url

    def canonical(self, *, type: str | None = None, architecture: str | None = None) -> Air:
        """The full form stored in the registry: ecosystem and type filled in where they were
        left out (from the file's architecture and the entry's kind), no file id or format
        (the registry entry is the file)."""
        ecosystem = self.ecosystem or ARCHITECTURE_ECOSYSTEMS.get(architecture or "", "other")
        return replace(self, ecosystem=ecosystem, type=self.type or type, file_id=None, format=None)

    def __str__(self) -> str:
        tail = self.id
        if self.version:
            tail += f"@{self.version}"
        if self.file_id:
            tail += f"+{self.file_id}"
        if self.format:
            tail += f".{self.format}"
        if self.ecosystem and self.type:
            return f"urn:air:{self.ecosystem}:{self.type}:{self.source}:{tail}"
        head = self.type or self.ecosystem
        return f"{head}:{self.source}:{tail}" if head else f"{self.source}:{tail}"


def _strip_prefixes(text: str) -> str:
    for prefix in ("urn:", "air:"):
        if text[: len(prefix)].lower() == prefix:
            text = text[len(prefix) :]
    return text


def parse_air(text: str) -> Air:
    """Parse an AIR in any of the spec's forms, or raise a SourceError showing the shapes."""
    raw = text.strip()
    if not raw or len(raw) > _MAX_REF_LENGTH:
        raise _refuse(raw, "a valid AIR")
    parts = _strip_prefixes(raw).split(":")
    at = next((i for i, p in enumerate(parts[:3]) if p.lower() in SOURCES and i < len(parts) - 1), None)
    if at is None:
        raise _refuse(raw, "a valid AIR (it names no source such as `civitai`)")
    head = [p.lower() for p in parts[:at]]
    source = parts[at].lower()
    ecosystem: str | None = None
    kind: str | None = None
    if len(head) == 2:
        ecosystem, kind = head
    elif len(head) == 1:
        if head[0] in TYPES:
            kind = head[0]
        else:
            ecosystem = head[0]
    if ecosystem is not None and ecosystem not in ECOSYSTEM_ARCHITECTURES:
        raise SourceError(
            f"Unknown AIR ecosystem `{ecosystem}` in `{raw[:120]}`; Civitai's include "
            "sd1, sdxl, pony, illustrious, noobai, flux1, sd3 and other."
        )
    if kind is not None and kind not in TYPES:
        raise SourceError(f"Unknown AIR type `{kind}` in `{raw[:120]}`; use one of {', '.join(TYPES[:10])}…")
    tail = ":".join(parts[at + 1 :])
    pattern = _CIVITAI_TAIL if source in CIVITAI_SOURCES else _OTHER_TAIL
    match = pattern.match(tail)
    if not match:
        why = (
            "a valid Civitai AIR: its model id and version are numbers, as in `civitai:120096@135931`"
            if source in CIVITAI_SOURCES
            else "a valid AIR"
        )
        raise _refuse(raw, why)
    fmt = match["format"].lower() if match["format"] else None
    return Air(ecosystem, kind, source, match["id"], match["version"], match["file"], fmt)


def looks_like_air(text: str) -> bool:
    """Whether ``text`` parses as an AIR (registry names never contain ``:``, AIRs always do)."""
    if ":" not in text:
        return False
    try:
        parse_air(text)
    except SourceError:
        return False
    return True


def split_inline_air(body: str) -> tuple[str, str | None] | None:
    """``civitai:120096@135931:0.7`` (the inside of a ``<lora:…>`` tag) -> the AIR and the
    weight text after it (None when there is none); None when the body starts with no AIR."""
    parts = body.split(":")
    for end in range(len(parts), 1, -1):
        head = ":".join(parts[:end]).strip()
        if looks_like_air(head):
            rest = ":".join(parts[end:]).strip() if end < len(parts) else None
            return head, rest
    return None


# --- what /lora add source: accepts ------------------------------------------------------


@dataclass(frozen=True)
class SourceRef:
    """A Civitai resource to look up: a version (by id), a model's latest version, or a hash."""

    kind: Literal["version", "model", "hash"]
    #: As typed, for messages.
    text: str
    version_id: int | None = None
    model_id: int | None = None
    #: A specific file of the version (an AIR's ``+fileId`` or a link's ``fileId=``).
    file_id: int | None = None
    hash: str | None = None
    air: Air | None = None

    def describe(self) -> str:
        if self.kind == "hash":
            return f"the file with hash `{self.hash}`"
        if self.kind == "model":
            return f"the latest version of Civitai model {self.model_id}"
        return f"Civitai version {self.version_id}"


def parse_source(text: str) -> SourceRef:
    """An AIR, a Civitai link or a file hash, as something Civitai's API can be asked about."""
    raw = (text or "").strip()
    if not raw:
        raise SourceError(f"No source was given. {ACCEPTED_SHAPES}")
    if len(raw) > _MAX_REF_LENGTH:
        raise SourceError(f"The source is longer than {_MAX_REF_LENGTH} characters. {ACCEPTED_SHAPES}")
    if _HASH.match(raw):
        if len(raw) not in HASH_LENGTHS:
            raise _refuse(raw, f"a file hash ({len(raw)} hex digits; SHA256 has 64, AutoV2 10)")
        return SourceRef("hash", raw, hash=raw.upper())
    if raw.lower().startswith(("http://", "https://")):
        return _parse_link(raw)
    air = parse_air(raw)
    if not air.is_civitai:
        raise SourceError(
            f"`{raw[:120]}` is a {air.source} AIR; only Civitai model versions (`civitai:ID@VERSION`) "
            "can be fetched. Download the file yourself and register it with `file`."
        )
    if air.type is not None and air.type not in LORA_TYPES | {"embedding"}:
        raise SourceError(
            f"`{raw[:120]}` names a {air.type}, not a LoRA or an embedding; `/lora add` fetches "
            "LoRAs (LoRA, LoCon, DoRA) and textual-inversion embeddings only."
        )
    file_id = int(air.file_id) if air.file_id else None
    if air.version is None:
        return SourceRef("model", raw, model_id=int(air.id), file_id=file_id, air=air)
    return SourceRef("version", raw, version_id=int(air.version), model_id=int(air.id), file_id=file_id, air=air)


def _parse_link(raw: str) -> SourceRef:
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    if host not in CIVITAI_HOSTS:
        raise _refuse(raw, "a Civitai link (only civitai.com links can be fetched)")
    path = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)

    def number(values: list[str] | None) -> int | None:
        value = (values or [""])[0]
        return int(value) if value.isdigit() and len(value) <= 12 else None

    if len(path) >= 2 and path[0] == "models" and path[1].isdigit():
        model_id = int(path[1])
        version = number(query.get("modelVersionId"))
        if version is not None:
            return SourceRef("version", raw, version_id=version, model_id=model_id)
        return SourceRef("model", raw, model_id=model_id)
    if len(path) == 4 and path[:3] == ["api", "download", "models"] and path[3].isdigit():
        return SourceRef("version", raw, version_id=int(path[3]), file_id=number(query.get("fileId")))
    if len(path) == 4 and path[:3] == ["api", "v1", "model-versions"] and path[3].isdigit():
        return SourceRef("version", raw, version_id=int(path[3]))
    raise _refuse(raw, "a Civitai model or download link")
