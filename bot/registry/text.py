"""Cleaning what admins and members type before it is stored or compared.

Names are looked up case-insensitively and typed back by users inside ``<lora:name:w>``, so
they are normalised once here (NFKC, zero-width and control characters removed, whitespace
collapsed) and every comparison uses :func:`name_key`. Refusals raise
:class:`~bot.registry.models.RegistryError` with a message written for the admin.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import urlsplit

from bot.registry.models import ARCHITECTURES, RegistryError

# The registry stores AIRs as sources; the grammar is bot.sources.refs's.
from bot.sources import refs
from bot.sources.refs import LORA_TYPES
from bot.sources.refs import Air as Air

MAX_NAME_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 10_000
MAX_TRIGGER_WORDS = 25
MAX_TRIGGER_WORD_LENGTH = 200
MAX_URL_LENGTH = 1_000

#: Characters that would break the inline ``<lora:name:weight>`` syntax.
_FORBIDDEN_IN_NAMES = frozenset(":<>")
_WHITESPACE = re.compile(r"\s+")


def strip_invisible(text: str) -> str:
    """NFKC-normalise and drop format (zero-width, bidi) and control characters.

    Newlines and tabs survive as whitespace so that descriptions keep their paragraphs.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to normalise or drop
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        ch
        for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co", "Cn")
    )


def clean_name(raw: str, *, what: str = "name") -> str:
    """The canonical spelling of a model, LoRA or recipe name, or a RegistryError saying why not."""
    if not isinstance(raw, str):
        raise RegistryError(f"The {what} must be text.")
    name = _WHITESPACE.sub(" ", strip_invisible(raw)).strip()
    if not name:
        raise RegistryError(
            f"The {what} is empty once invisible characters are removed; "
            "type a name with visible letters or digits."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            f"The {what} is {len(name)} characters long; shorten it to {MAX_NAME_LENGTH} or fewer."
        )
    bad = sorted({ch for ch in name if ch in _FORBIDDEN_IN_NAMES})
    if bad:
        raise RegistryError(
            f"The {what} {name!r} contains {' '.join(bad)}, which would break the inline "
            "`<lora:name:weight>` syntax; use letters, digits, spaces, '-' or '_' instead."
        )
    return name


def name_key(name: str) -> str:
    """Key for case-insensitive, invisible-character-insensitive comparison of names."""
    return _WHITESPACE.sub(" ", strip_invisible(name)).strip().casefold()


def clean_text(raw: str | None, *, what: str, limit: int = MAX_DESCRIPTION_LENGTH) -> str:
    """Free text (descriptions, negative prompts): invisible characters removed, length checked."""
    if raw is None:
        return ""
    text = strip_invisible(raw).strip()
    if len(text) > limit:
        raise RegistryError(
            f"The {what} is {len(text):,} characters long; the limit is {limit:,}. "
            "Shorten it or link to a page with the full text."
        )
    return text


def clean_trigger_words(words: object) -> tuple[str, ...]:
    """Trigger words, cleaned, empty ones dropped, duplicates (case-insensitive) removed."""
    if isinstance(words, str):
        words = words.split(",")
    if not isinstance(words, (list, tuple)):
        raise RegistryError("Trigger words must be a list of words or a comma-separated text.")
    out: list[str] = []
    seen: set[str] = set()
    for raw in words:
        word = _WHITESPACE.sub(" ", strip_invisible(str(raw))).strip()
        if not word or word.casefold() in seen:
            continue
        if len(word) > MAX_TRIGGER_WORD_LENGTH:
            raise RegistryError(
                f"The trigger word {word[:40]!r}… is {len(word)} characters long; "
                f"keep each under {MAX_TRIGGER_WORD_LENGTH}."
            )
        seen.add(word.casefold())
        out.append(word)
    if len(out) > MAX_TRIGGER_WORDS:
        raise RegistryError(
            f"{len(out)} trigger words given; keep the {MAX_TRIGGER_WORDS} most useful ones."
        )
    return tuple(out)


# --- sources: Civitai AIRs and URLs -------------------------------------------------------


def parse_air(text: str) -> Air:
    """Parse an AIR in any of Civitai's forms (see bot.sources.refs), or raise a RegistryError
    that shows the accepted shapes."""
    try:
        return refs.parse_air(text)
    except refs.SourceError as exc:
        raise RegistryError(str(exc)) from None


def clean_source(raw: str | None, *, kind: str, architecture: str | None) -> str | None:
    """A LoRA's or embedding's source: an AIR in any of Civitai's forms (checked against the
    kind and architecture, stored in its full ``urn:air:…`` form) or an http(s) URL."""
    if raw is None:
        return None
    text = strip_invisible(raw).strip()
    if not text:
        return None
    if len(text) > MAX_URL_LENGTH:
        raise RegistryError(f"The source is longer than {MAX_URL_LENGTH} characters.")
    if text.lower().startswith(("http://", "https://")):
        return clean_url(text, what="source")
    air = parse_air(text)
    types = LORA_TYPES if kind == "lora" else frozenset({kind})
    if air.type is not None and air.type not in types:
        raise RegistryError(
            f"The AIR names a {air.type!r}, but this entry is a {kind}; "
            "check that you copied the right AIR."
        )
    if architecture not in (None, "unknown") and air.architecture not in (architecture, "unknown"):
        raise RegistryError(
            f"The AIR is for {air.architecture} but the file is {architecture}; "
            "check that you copied the AIR of the same version as the file."
        )
    return str(air.canonical(type=kind, architecture=architecture))


def clean_url(raw: str | None, *, what: str) -> str | None:
    """An http(s) URL with a host, or None."""
    if raw is None or not raw.strip():
        return None
    text = strip_invisible(raw).strip()
    if len(text) > MAX_URL_LENGTH:
        raise RegistryError(f"The {what} URL is longer than {MAX_URL_LENGTH} characters.")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        kind = "neither an `urn:air:…` AIR nor an http(s) URL" if what == "source" else "not an http(s) URL"
        raise RegistryError(
            f"The {what} {text[:120]!r} is {kind}; paste the full address, e.g. https://civitai.com/models/120096."
        )
    return text


def check_architecture(value: str) -> str:
    if value not in ARCHITECTURES:
        raise RegistryError(
            f"Unknown architecture {value!r}; use one of {', '.join(ARCHITECTURES)}."
        )
    return value


_HEX = re.compile(r"^[0-9a-fA-F]+$")


def clean_hash(value: str | None, *, length: int, what: str, upper: bool = False) -> str | None:
    """A hex digest of the given length, or None. AutoV2 is shown upper case, as Civitai does."""
    if value is None or value == "":
        return None
    value = value.strip()
    if len(value) != length or not _HEX.match(value):
        raise RegistryError(f"The {what} must be {length} hexadecimal digits, got {value[:80]!r}.")
    return value.upper() if upper else value.lower()


#: Words (or phrases) one server may block in prompts, and the longest one.
MAX_BLOCKED_TERMS = 200
MAX_TERM_LENGTH = 60


def normalise_for_matching(text: str) -> str:
    """What blocklist matching compares: NFKC, invisible characters removed, case-folded."""
    return unicodedata.normalize("NFKC", strip_invisible(text)).casefold()


def clean_blocklist(terms: Iterable[str]) -> tuple[str, ...]:
    """An admin's blocked terms, normalised and de-duplicated; ValueError says what to shorten."""
    out: list[str] = []
    for raw in terms:
        term = " ".join(normalise_for_matching(raw).split())
        if not term or term in out:
            continue
        if len(term) > MAX_TERM_LENGTH:
            raise ValueError(f"the blocked term {raw[:40]!r}… is over {MAX_TERM_LENGTH} characters")
        out.append(term)
    if len(out) > MAX_BLOCKED_TERMS:
        raise ValueError(f"a server can block at most {MAX_BLOCKED_TERMS} terms (got {len(out)})")
    return tuple(out)
