"""Each server's LoRAs (``Registry.loras``): registering, editing, searching, use counts and
members' bookmarks of them.

Bookmarks live here because they belong to a LoRA (they go with it, ON DELETE CASCADE) and
search filters on them. Every method takes the ``guild_id`` first and every query filters on
it. Admin changes write an audit row in the same transaction (see :mod:`bot.registry.audit`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import aiosqlite

from bot.registry import audit, search
from bot.registry.checks import check_changes, clean_lora
from bot.registry.db import Database
from bot.registry.models import (
    LORA_EDITABLE,
    AlreadyExists,
    Category,
    Choice,
    LoraEntry,
    NotFound,
    SearchSort,
)
from bot.registry.text import name_key
from bot.registry.writes import Changed, changed_columns, taken, write_changes

_LORA_COLUMNS = (
    "name, name_key, architecture, category, trigger_words, default_weight, recommended_min, "
    "recommended_max, file, sha256, autov2, source, description, nsfw, preview_url, added_by, "
    "added_at, uses, enabled, family, lora_format, rank, trained_clip_skip, a1111_hash, variant, base_model, "
    "speed_profile"
)
_LORA_SELECT = "SELECT l.* FROM loras l"


def lora_from_row(row: sqlite3.Row) -> LoraEntry:
    return LoraEntry(
        id=row["id"],
        name=row["name"],
        architecture=row["architecture"],
        category=Category(row["category"]),
        trigger_words=tuple(json.loads(row["trigger_words"])),
        default_weight=row["default_weight"],
        recommended_min=row["recommended_min"],
        recommended_max=row["recommended_max"],
        file=row["file"],
        sha256=row["sha256"],
        autov2=row["autov2"],
        source=row["source"],
        description=row["description"],
        nsfw=bool(row["nsfw"]),
        preview_url=row["preview_url"],
        added_by=row["added_by"],
        added_at=row["added_at"],
        uses=row["uses"],
        enabled=bool(row["enabled"]),
        family=row["family"],
        lora_format=row["lora_format"],
        rank=row["rank"],
        trained_clip_skip=row["trained_clip_skip"],
        a1111_hash=row["a1111_hash"],
        variant=row["variant"],
        base_model=row["base_model"],
        speed_profile=row["speed_profile"],
    )


def _lora_values(lora: LoraEntry) -> tuple[Any, ...]:
    return (
        lora.name,
        name_key(lora.name),
        lora.architecture,
        lora.category.value,
        json.dumps(list(lora.trigger_words), ensure_ascii=False),
        lora.default_weight,
        lora.recommended_min,
        lora.recommended_max,
        lora.file,
        lora.sha256,
        lora.autov2,
        lora.source,
        lora.description,
        int(lora.nsfw),
        lora.preview_url,
        lora.added_by,
        lora.added_at,
        lora.uses,
        int(lora.enabled),
        lora.family,
        lora.lora_format,
        lora.rank,
        lora.trained_clip_skip,
        lora.a1111_hash,
        lora.variant,
        lora.base_model,
        lora.speed_profile,
    )
_LORA_COUNT = len(_LORA_COLUMNS.split(","))
#: Everything but the description, which validation never needs (the catalog's columns).
CATALOG_COLUMNS = "id, name_key, " + _LORA_COLUMNS.replace("description", "'' AS description")


class LoraStore:
    """A server's LoRAs; ``changed`` is told of every write (the catalog cache)."""

    def __init__(self, db: Database, changed: Changed) -> None:
        self._db = db
        self._changed = changed

    async def add(self, guild_id: int, entry: LoraEntry, actor_id: int) -> LoraEntry:
        """Register a LoRA (see :meth:`LoraEntry.from_file_info`); returns it with its id.

        Raises AlreadyExists when the name (case-insensitive, invisible characters ignored)
        is taken in this server, RegistryError for anything else to correct.
        """
        lora = replace(clean_lora(entry), added_by=actor_id, added_at=time.time(), uses=0, id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await taken(conn, "loras", guild_id, name_key(lora.name))
            if existing is not None:
                raise AlreadyExists(
                    f"A LoRA named {existing!r} already exists in this server; "
                    "pick another name or edit that one with /lora edit."
                )
            cursor = await conn.execute(
                f"INSERT INTO loras (guild_id, {_LORA_COLUMNS}) VALUES (?{', ?' * _LORA_COUNT})",  # noqa: S608
                (guild_id, *_lora_values(lora)),
            )
            await audit.record(
                conn,
                guild_id,
                actor_id,
                "lora.add",
                lora.name,
                audit.added(lora.file, lora.architecture, lora.source),
            )
            return int(cursor.lastrowid or 0)

        lora_id = await self._db.transaction(work)
        self._changed(guild_id)
        return replace(lora, id=lora_id)

    async def add_many(self, guild_id: int, entries: Iterable[LoraEntry], actor_id: int) -> int:
        """Register many LoRAs in one transaction (imports, benchmarks); returns how many.

        All or nothing: one bad entry or taken name refuses the whole batch.
        """
        now = time.time()
        loras = [replace(clean_lora(e), added_by=actor_id, added_at=now, uses=0) for e in entries]
        keys = [name_key(lora.name) for lora in loras]
        if len(set(keys)) != len(keys):
            raise AlreadyExists("The batch names the same LoRA twice.")

        async def work(conn: aiosqlite.Connection) -> None:
            try:
                await conn.executemany(
                    f"INSERT INTO loras (guild_id, {_LORA_COLUMNS}) VALUES (?{', ?' * _LORA_COUNT})",  # noqa: S608
                    [(guild_id, *_lora_values(lora)) for lora in loras],
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    "A LoRA in the batch has a name already taken in this server."
                ) from None
            await audit.record(conn, guild_id, actor_id, "lora.import", f"{len(loras)} LoRAs")

        await self._db.transaction(work)
        self._changed(guild_id)
        return len(loras)

    async def get(self, guild_id: int, name: str) -> LoraEntry | None:
        row = await self._db.fetch_one(
            f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.name_key = ?", (guild_id, name_key(name))
        )
        return lora_from_row(row) if row else None

    async def get_by_id(self, guild_id: int, lora_id: int) -> LoraEntry | None:
        """The LoRA a card's buttons name by id (ids survive renames); None if it is gone.

        Scoped to ``guild_id`` like every lookup, so a forged custom id cannot reach another
        server's entry.
        """
        row = await self._db.fetch_one(
            f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.id = ?", (guild_id, lora_id)
        )
        return lora_from_row(row) if row else None

    async def _require_lora(self, guild_id: int, name: str) -> LoraEntry:
        lora = await self.get(guild_id, name)
        if lora is None:
            raise NotFound(f"No LoRA named {name!r} in this server; try `/lora search`.")
        return lora

    async def update(
        self, guild_id: int, name: str, actor_id: int, /, **changes: Any
    ) -> LoraEntry:
        """Change fields of a LoRA (see ``LORA_EDITABLE``), audited with before/after values.

        Read and written in one transaction, changed columns only (see :meth:`ModelStore.update`).
        """
        check_changes(changes, LORA_EDITABLE, "A LoRA")

        async def work(conn: aiosqlite.Connection) -> LoraEntry:
            cursor = await conn.execute(
                f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.name_key = ?", (guild_id, name_key(name))
            )
            row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"No LoRA named {name!r} in this server; try `/lora search`.")
            before = lora_from_row(row)
            after = clean_lora(replace(before, **changes))
            if name_key(after.name) != name_key(before.name):
                existing = await taken(conn, "loras", guild_id, name_key(after.name))
                if existing is not None:
                    raise AlreadyExists(f"A LoRA named {existing!r} already exists in this server.")
            changed = changed_columns(_LORA_COLUMNS, _lora_values(before), _lora_values(after))
            for kept in ("added_by", "added_at", "uses"):  # not editable; uses counts on meanwhile
                changed.pop(kept, None)
            if not changed:
                return after  # nothing to write, nothing to audit
            await write_changes(conn, "loras", guild_id, before.id, changed)
            await audit.record(
                conn,
                guild_id,
                actor_id,
                "lora.update",
                before.name,
                audit.diff(before, after, LORA_EDITABLE),
            )
            return after

        after = await self._db.transaction(work)
        self._changed(guild_id)
        return after

    async def set_enabled(
        self, guild_id: int, name: str, actor_id: int, enabled: bool
    ) -> LoraEntry:
        """Disable a LoRA without losing its uses, bookmarks or history (or enable it again)."""
        return await self.update(guild_id, name, actor_id, enabled=enabled)

    async def remove(self, guild_id: int, name: str, actor_id: int) -> None:
        """Delete a LoRA; its bookmarks go with it."""
        lora = await self._require_lora(guild_id, name)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "DELETE FROM loras WHERE id = ? AND guild_id = ?", (lora.id, guild_id)
            )
            await audit.record(
                conn, guild_id, actor_id, "lora.remove", lora.name, {"file": lora.file}
            )

        await self._db.transaction(work)
        self._changed(guild_id)

    async def files(self, guild_id: int) -> set[str]:
        """Files already registered here, so ``/lora add`` offers only the others."""
        rows = await self._db.fetch_all("SELECT file FROM loras WHERE guild_id = ?", (guild_id,))
        return {row[0] for row in rows}

    async def count(self, guild_id: int) -> int:
        row = await self._db.fetch_one("SELECT count(*) FROM loras WHERE guild_id = ?", (guild_id,))
        return int(row[0]) if row else 0

    async def record_use(self, guild_id: int, lora_names: Iterable[str]) -> None:
        """Count one generation for each LoRA (for the "most used" sort).

        Does not rebuild the validation catalog: its ``uses`` numbers may lag behind.
        """
        keys = sorted({name_key(n) for n in lora_names})
        if keys:
            await self._db.execute_many(
                "UPDATE loras SET uses = uses + 1 WHERE guild_id = ? AND name_key = ?",
                [(guild_id, key) for key in keys],
            )

    async def search(
        self,
        guild_id: int,
        query: str = "",
        *,
        architecture: str | None = None,
        category: Category | str | None = None,
        nsfw: bool | None = None,
        enabled: bool | None = None,
        bookmarked_by: int | None = None,
        sort: SearchSort = "newest",
        limit: int = 25,
        offset: int = 0,
        family: str | None = None,
    ) -> list[LoraEntry]:
        """Full-text search over name, trigger words and description, with filters.

        Every word of ``query`` must match the start of a word (``cyber`` finds
        ``cyberpunk``); an empty query lists everything that passes the filters.
        ``nsfw=False`` hides NSFW LoRAs; ``bookmarked_by`` keeps one member's bookmarks.
        """
        order = search.check_sort(sort)
        limit, offset = search.clamp_limit(limit, offset)
        clauses, params = search.filters(
            guild_id,
            architecture=architecture,
            category=Category(category).value if category is not None else None,
            nsfw=nsfw,
            enabled=enabled,
            family=family,
        )
        source = "loras l"
        match = search.fts_query(query)
        if match is not None:
            # CROSS JOIN keeps the full-text index as the outer loop: otherwise SQLite may
            # walk the guild's rows and re-run the MATCH for each one (seconds at 10k rows).
            source = f"{search.FTS_SOURCE}"
            clauses.append("lora_fts MATCH ?")
            params.append(match)
        if bookmarked_by is not None:
            source += " JOIN bookmarks b ON b.lora_id = l.id AND b.guild_id = l.guild_id AND b.user_id = ?"
            params.insert(0, bookmarked_by)
        sql = (
            f"SELECT l.* FROM {source} WHERE {' AND '.join(clauses)} "  # noqa: S608 - fixed fragments
            f"ORDER BY {order} LIMIT ? OFFSET ?"
        )
        rows = await self._db.fetch_all(sql, (*params, limit, offset))
        return [lora_from_row(row) for row in rows]

    async def autocomplete(
        self,
        guild_id: int,
        text: str,
        *,
        architecture: str | None = None,
        nsfw_ok: bool | None = None,
        family: str | None = None,
    ) -> list[Choice]:
        """At most 25 enabled LoRAs for a Discord autocomplete, labels ≤ 100 characters.

        ``family`` (the chosen model's) lists that family's LoRAs first in every group.

        ``architecture`` (the model chosen earlier in the same command) keeps only LoRAs for
        it. Names starting with ``text`` come first, then names or trigger words containing a
        word that starts with it; empty text lists the most used. ``nsfw_ok=False`` (a
        non-NSFW channel) hides NSFW LoRAs.
        """
        limit = search.MAX_CHOICES
        nsfw = False if nsfw_ok is False else None
        clauses, params = search.filters(
            guild_id, architecture=architecture, nsfw=nsfw, enabled=True
        )
        where = " AND ".join(clauses)
        key = name_key(text)
        # Same-family first: "(l.family = ?) DESC" sorts matches of the model's family ahead.
        first = "(l.family = ?) DESC, " if family else ""
        first_params = (family,) if family else ()
        if not key:
            rows = await self._db.fetch_all(
                f"{_LORA_SELECT} WHERE {where} ORDER BY {first}l.uses DESC LIMIT ?",
                (*params, *first_params, limit),
            )
            return [search.lora_choice(lora_from_row(r)) for r in rows]
        low, high = search.prefix_bounds(key)
        rows = await self._db.fetch_all(
            f"{_LORA_SELECT} WHERE {where} AND l.name_key >= ? AND l.name_key < ? "
            f"ORDER BY {first}l.name_key LIMIT ?",
            (*params, low, high, *first_params, limit),
        )
        found = [lora_from_row(r) for r in rows]
        match = search.fts_query(text, columns=search.AUTOCOMPLETE_COLUMNS)
        if len(found) < limit and match is not None:
            rows = await self._db.fetch_all(
                f"SELECT l.* FROM {search.FTS_SOURCE} "  # noqa: S608 - fixed fragments
                f"WHERE lora_fts MATCH ? AND {where} LIMIT ?",
                (match, *params, limit + len(found)),
            )
            found = search.merge_unique(found, [lora_from_row(r) for r in rows], limit)
        if family:  # stable: each group keeps its order, the model's family first
            found.sort(key=lambda lora: lora.family != family)
        return [search.lora_choice(lora) for lora in found]


    # --- bookmarks -------------------------------------------------------------------------

    async def bookmark(self, guild_id: int, user_id: int, lora_name: str) -> bool:
        """Bookmark a LoRA for a member; False when it already was bookmarked."""
        lora = await self._require_lora(guild_id, lora_name)
        changed = await self._db.execute(
            "INSERT OR IGNORE INTO bookmarks (guild_id, user_id, lora_id, created_at) VALUES (?, ?, ?, ?)",
            (guild_id, user_id, lora.id, time.time()),
        )
        return changed == 1

    async def unbookmark(self, guild_id: int, user_id: int, lora_name: str) -> bool:
        """Remove a bookmark; False when there was none."""
        lora = await self.get(guild_id, lora_name)
        if lora is None:
            return False
        changed = await self._db.execute(
            "DELETE FROM bookmarks WHERE guild_id = ? AND user_id = ? AND lora_id = ?",
            (guild_id, user_id, lora.id),
        )
        return changed == 1

    async def bookmarked_by(self, guild_id: int, user_id: int) -> list[LoraEntry]:
        """A member's bookmarked LoRAs in this server, most recently bookmarked first."""
        rows = await self._db.fetch_all(
            f"{_LORA_SELECT} JOIN bookmarks b ON b.lora_id = l.id "
            "WHERE b.guild_id = ? AND b.user_id = ? AND l.guild_id = ? ORDER BY b.created_at DESC, l.id DESC",
            (guild_id, user_id, guild_id),
        )
        return [lora_from_row(row) for row in rows]
