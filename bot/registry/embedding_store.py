"""Each server's textual-inversion embeddings (``Registry.embeddings``).

Every method takes the ``guild_id`` first and every query filters on it; adding and removing
write an audit row in the same transaction (see :mod:`bot.registry.audit`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from typing import Any

import aiosqlite

from bot.registry import audit, search
from bot.registry.checks import clean_embedding
from bot.registry.db import Database
from bot.registry.models import AlreadyExists, EmbeddingEntry, NotFound
from bot.registry.text import name_key
from bot.registry.writes import Changed, taken

_EMBEDDING_COLUMNS = (
    "name, name_key, architecture, family, file, sha256, autov2, vectors, description, nsfw, "
    "enabled, added_by, added_at, source"
)


def _embedding_from_row(row: sqlite3.Row) -> EmbeddingEntry:
    return EmbeddingEntry(
        id=row["id"],
        name=row["name"],
        architecture=row["architecture"],
        family=row["family"],
        file=row["file"],
        sha256=row["sha256"],
        autov2=row["autov2"],
        vectors=row["vectors"],
        description=row["description"],
        nsfw=bool(row["nsfw"]),
        enabled=bool(row["enabled"]),
        added_by=row["added_by"],
        added_at=row["added_at"],
        source=row["source"],
    )


class EmbeddingStore:
    """A server's embeddings; ``changed`` is told of every write (the catalog cache)."""

    def __init__(self, db: Database, changed: Changed) -> None:
        self._db = db
        self._changed = changed

    async def add(self, guild_id: int, entry: EmbeddingEntry, actor_id: int) -> EmbeddingEntry:
        """Register a textual-inversion embedding; its name is what prompts call it by."""
        embedding = replace(clean_embedding(entry), added_by=actor_id, added_at=time.time(), id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await taken(conn, "embeddings", guild_id, name_key(embedding.name))
            if existing is not None:
                raise AlreadyExists(f"An embedding named {existing!r} already exists in this server.")
            cursor = await conn.execute(
                f"INSERT INTO embeddings (guild_id, {_EMBEDDING_COLUMNS}) "  # noqa: S608
                f"VALUES (?{', ?' * len(_EMBEDDING_COLUMNS.split(','))})",
                (
                    guild_id, embedding.name, name_key(embedding.name), embedding.architecture,
                    embedding.family, embedding.file, embedding.sha256, embedding.autov2,
                    embedding.vectors, embedding.description, int(embedding.nsfw),
                    int(embedding.enabled), embedding.added_by, embedding.added_at, embedding.source,
                ),  # fmt: skip
            )
            await audit.record(
                conn, guild_id, actor_id, "embedding.add", embedding.name,
                audit.added(embedding.file, embedding.architecture, embedding.source),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

        embedding_id = await self._db.transaction(work)
        self._changed(guild_id)
        return replace(embedding, id=embedding_id)

    async def get(self, guild_id: int, name: str) -> EmbeddingEntry | None:
        row = await self._db.fetch_one(
            "SELECT * FROM embeddings WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
        )
        return _embedding_from_row(row) if row else None

    async def all(self, guild_id: int) -> list[EmbeddingEntry]:
        rows = await self._db.fetch_all(
            "SELECT * FROM embeddings WHERE guild_id = ? ORDER BY name_key", (guild_id,)
        )
        return [_embedding_from_row(row) for row in rows]

    async def remove(self, guild_id: int, name: str, actor_id: int) -> None:
        embedding = await self.get(guild_id, name)
        if embedding is None:
            raise NotFound(f"No embedding named {name!r} in this server; `/embedding list` shows them.")

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM embeddings WHERE id = ? AND guild_id = ?", (embedding.id, guild_id))
            await audit.record(conn, guild_id, actor_id, "embedding.remove", embedding.name, {"file": embedding.file})

        await self._db.transaction(work)
        self._changed(guild_id)

    async def autocomplete(
        self, guild_id: int, text: str, *, architecture: str | None = None, nsfw_ok: bool | None = None
    ) -> list[EmbeddingEntry]:
        """Enabled embeddings whose name starts with ``text`` (for the model's architecture)."""
        low, high = search.prefix_bounds(name_key(text))
        clauses = ["guild_id = ?", "enabled = 1", "name_key >= ?", "name_key < ?"]
        params: list[Any] = [guild_id, low, high]
        if architecture:
            clauses.append("architecture IN (?, 'unknown')")
            params.append(architecture)
        if nsfw_ok is False:
            clauses.append("nsfw = 0")
        rows = await self._db.fetch_all(
            f"SELECT * FROM embeddings WHERE {' AND '.join(clauses)} ORDER BY name_key LIMIT ?",  # noqa: S608
            (*params, search.MAX_CHOICES),
        )
        return [_embedding_from_row(row) for row in rows]

