"""Turning what a member types into FTS5 queries and autocomplete choices.

User text never reaches FTS5's query language directly: it is split into word tokens and each
token is quoted as a prefix term, so quotes, ``*``, ``NEAR`` or ``-`` typed by a member are
just characters. All values travel as SQL parameters; only fixed column lists and clauses
chosen from this module are formatted into the SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bot.registry.models import Choice, LoraEntry, ModelEntry
from engine.families import family_label

MAX_CHOICES = 25
MAX_CHOICE_LABEL = 100
MAX_SEARCH_LIMIT = 100
_TOKEN = re.compile(r"\w+", re.UNICODE)
#: FTS5 columns searched while typing: name and trigger words (descriptions are for /lora search).
AUTOCOMPLETE_COLUMNS = "{name trigger_words}"

#: Full-text matches first, then their rows by primary key (see ``LoraStore.search``).
FTS_SOURCE = "lora_fts CROSS JOIN loras l ON l.id = lora_fts.rowid"

SORT_ORDER: dict[str, str] = {
    "newest": "l.added_at DESC, l.id DESC",
    "most_used": "l.uses DESC, l.name_key",
    "name": "l.name_key",
}


def fts_query(text: str, *, columns: str | None = None, max_tokens: int = 8) -> str | None:
    """A safe FTS5 MATCH expression: every word of ``text`` as a quoted prefix term, ANDed.

    None when ``text`` has no word characters (nothing to match on).
    """
    tokens = _TOKEN.findall(text.casefold())[:max_tokens]
    if not tokens:
        return None
    # \w+ tokens contain no double quotes, so quoting cannot be escaped from.
    expression = " ".join(f'"{token}"*' for token in tokens)
    return f"{columns} : ({expression})" if columns else expression


def prefix_bounds(key: str) -> tuple[str, str]:
    """``lower <= name_key < upper`` selects exactly the keys starting with ``key``."""
    return key, key + "\U0010ffff"


def check_sort(sort: str) -> str:
    if sort not in SORT_ORDER:
        raise ValueError(f"Unknown sort {sort!r}; use one of {', '.join(SORT_ORDER)}.")
    return SORT_ORDER[sort]


def clamp_limit(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(int(limit), MAX_SEARCH_LIMIT)), max(0, int(offset))


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def lora_choice(lora: LoraEntry) -> Choice:
    """``name · category · arch · trigger words``, cut to Discord's 100 characters."""
    parts = [lora.name, lora.category.value, lora.architecture]
    if lora.family != "unknown":
        parts.append(family_label(lora.family))
    if lora.nsfw:
        parts.append("NSFW")
    if lora.trigger_words:
        parts.append(", ".join(lora.trigger_words))
    return Choice(name=truncate(" · ".join(parts), MAX_CHOICE_LABEL), value=lora.name)


def model_choice(model: ModelEntry) -> Choice:
    parts = [model.name, model.architecture]
    if model.nsfw:
        parts.append("NSFW")
    return Choice(name=truncate(" · ".join(parts), MAX_CHOICE_LABEL), value=model.name)


def filters(
    guild_id: int,
    *,
    architecture: str | None = None,
    category: str | None = None,
    nsfw: bool | None = None,
    enabled: bool | None = None,
    family: str | None = None,
) -> tuple[list[str], list[Any]]:
    """WHERE clauses (fixed text) and their parameters for the common LoRA filters."""
    clauses = ["l.guild_id = ?"]
    params: list[Any] = [guild_id]
    for column, value in (("architecture", architecture), ("category", category), ("family", family)):
        if value is not None:
            clauses.append(f"l.{column} = ?")
            params.append(str(value))
    for column, flag in (("nsfw", nsfw), ("enabled", enabled)):
        if flag is not None:
            clauses.append(f"l.{column} = ?")
            params.append(int(flag))
    return clauses, params


def merge_unique(
    first: Sequence[LoraEntry], second: Sequence[LoraEntry], limit: int
) -> list[LoraEntry]:
    seen = {lora.id for lora in first}
    out = list(first)
    for lora in second:
        if len(out) >= limit:
            break
        if lora.id not in seen:
            seen.add(lora.id)
            out.append(lora)
    return out[:limit]
