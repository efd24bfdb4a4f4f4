"""Small pieces the admin stores (models, LoRAs, embeddings) share when they write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiosqlite

#: Called with a server's id after a write that changes what its validation catalog holds.
Changed = Callable[[int], None]


async def taken(conn: aiosqlite.Connection, table: str, guild_id: int, key: str) -> str | None:
    """The name already registered under ``key`` in this server's ``table``, if any."""
    assert table in ("loras", "models", "embeddings")
    cursor = await conn.execute(
        f"SELECT name FROM {table} WHERE guild_id = ? AND name_key = ?",  # noqa: S608 - fixed table name
        (guild_id, key),
    )
    row = await cursor.fetchone()
    return row[0] if row else None


async def write_changes(
    conn: aiosqlite.Connection, table: str, guild_id: int, row_id: int, changed: dict[str, Any]
) -> None:
    """Write ``changed`` (from :func:`changed_columns`) to one entry of this server's ``table``."""
    assert table in ("loras", "models")
    assignments = ", ".join(f"{column} = ?" for column in changed)
    await conn.execute(
        f"UPDATE {table} SET {assignments} WHERE id = ? AND guild_id = ?",  # noqa: S608 - fixed table, known columns
        (*changed.values(), row_id, guild_id),
    )


def changed_columns(columns: str, before: tuple[Any, ...], after: tuple[Any, ...]) -> dict[str, Any]:
    """The columns whose stored value an edit changes, with their new values.

    An update writes only these, so it can never put back an old value of a column it did
    not mean to change (and a rename writes ``name_key`` along with ``name``).
    """
    names = [c.strip() for c in columns.split(",")]
    return {name: new for name, old, new in zip(names, before, after, strict=True) if old != new}
