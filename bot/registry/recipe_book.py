"""The server recipe book, recipe cards, result lineage and hash look-ups, in SQLite.

Kept apart from the admin stores (models, LoRAs, settings) because these are the
members' records rather than the admins' catalogue. ``Registry.book`` is an instance; every
method takes the ``guild_id`` first and filters on it, like the rest of the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite

from bot.registry.db import Database
from bot.registry.models import AlreadyExists, RegistryError
from bot.registry.text import clean_name, name_key

#: Recipes one server's book may hold; only stops abuse.
MAX_BOOK_RECIPES = 5_000
#: A stored recipe is a few hundred bytes; this only stops abuse.
MAX_RECIPE_JSON = 32_000
BookSort = Literal["newest", "most_used", "name"]
_ORDER = {"newest": "b.created_at DESC, b.id DESC", "most_used": "b.uses DESC, b.created_at DESC", "name": "b.name_key"}


def recipe_text(recipe: Mapping[str, Any]) -> str:
    """A recipe as stored (sorted JSON), refused past :data:`MAX_RECIPE_JSON` characters."""
    text = json.dumps(recipe, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_RECIPE_JSON:
        raise RegistryError(f"This recipe is {len(text):,} characters as JSON, over the {MAX_RECIPE_JSON:,} limit; shorten the prompt.")
    return text


@dataclass(frozen=True)
class BookEntry:
    id: int
    name: str
    recipe: dict[str, Any]
    author_id: int
    created_at: float
    uses: int
    source_message_id: int | None = None


@dataclass(frozen=True)
class Card:
    """A recipe shown as a card; its buttons find it here by ``id``."""

    id: int
    guild_id: int
    channel_id: int
    message_id: int | None
    recipe: dict[str, Any]
    author_id: int | None
    shared_by: int
    source: str
    source_message_id: int | None
    source_channel_id: int | None
    book_name: str | None
    image_url: str | None
    created_at: float


@dataclass(frozen=True)
class Lineage:
    """Where a posted result came from."""

    origin: str
    parent_message_id: int | None
    parent_channel_id: int | None


def _entry(row: Any) -> BookEntry:
    return BookEntry(row["id"], row["name"], json.loads(row["recipe"]), row["author_id"], row["created_at"], row["uses"], row["source_message_id"])


def _card(row: Any) -> Card:
    return Card(
        row["id"], row["guild_id"], row["channel_id"], row["message_id"], json.loads(row["recipe"]), row["author_id"],
        row["shared_by"], row["source"], row["source_message_id"], row["source_channel_id"], row["book_name"],
        row["image_url"], row["created_at"],
    )  # fmt: skip


class RecipeBook:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- the server book -------------------------------------------------------------

    async def save(
        self,
        guild_id: int,
        author_id: int,
        name: str,
        recipe: Mapping[str, Any],
        *,
        model_name: str,
        lora_names: Iterable[str],
        source_message_id: int | None = None,
    ) -> BookEntry:
        """Add a recipe under a name nobody in this server has used (case-insensitive)."""
        clean = clean_name(name, what="recipe name")
        text = recipe_text(recipe)
        now = time.time()

        async def work(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "SELECT name, author_id FROM recipe_book WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(clean))
            )
            taken = await cursor.fetchone()
            if taken is not None:
                raise AlreadyExists(
                    f"This server's recipe book already has **{taken[0]}** (by <@{taken[1]}>); pick another name."
                )
            cursor = await conn.execute("SELECT count(*) FROM recipe_book WHERE guild_id = ?", (guild_id,))
            row = await cursor.fetchone()
            if row and row[0] >= MAX_BOOK_RECIPES:
                raise RegistryError(f"This server's recipe book is full ({MAX_BOOK_RECIPES:,} recipes); ask an admin to clear out old ones.")
            cursor = await conn.execute(
                "INSERT INTO recipe_book (guild_id, name, name_key, recipe, author_id, model_key, source_message_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, clean, name_key(clean), text, author_id, name_key(model_name), source_message_id, now),
            )
            book_id = int(cursor.lastrowid or 0)
            await conn.executemany(
                "INSERT OR IGNORE INTO recipe_book_loras (book_id, guild_id, lora_key) VALUES (?, ?, ?)",
                [(book_id, guild_id, name_key(n)) for n in lora_names if name_key(n)],
            )
            return book_id

        book_id = await self._db.transaction(work)
        return BookEntry(book_id, clean, json.loads(text), author_id, now, 0, source_message_id)

    async def get(self, guild_id: int, name: str) -> BookEntry | None:
        row = await self._db.fetch_one(
            "SELECT * FROM recipe_book WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
        )
        return _entry(row) if row else None

    async def list(
        self,
        guild_id: int,
        *,
        sort: BookSort = "newest",
        model: str | None = None,
        lora: str | None = None,
        author_id: int | None = None,
        limit: int = 15,
        offset: int = 0,
    ) -> tuple[list[BookEntry], int]:
        """One page of the book with its filters, and how many recipes pass them."""
        clauses, params = ["b.guild_id = ?"], [guild_id]
        source = "recipe_book b"
        if lora:
            source += " JOIN recipe_book_loras l ON l.book_id = b.id AND l.guild_id = b.guild_id AND l.lora_key = ?"
            params.insert(0, name_key(lora))  # type: ignore[arg-type]
        if model:
            clauses.append("b.model_key = ?")
            params.append(name_key(model))  # type: ignore[arg-type]
        if author_id is not None:
            clauses.append("b.author_id = ?")
            params.append(author_id)
        where = " AND ".join(clauses)
        total = await self._db.fetch_one(f"SELECT count(*) FROM {source} WHERE {where}", params)  # noqa: S608 - fixed fragments
        rows = await self._db.fetch_all(
            f"SELECT b.* FROM {source} WHERE {where} ORDER BY {_ORDER[sort]} LIMIT ? OFFSET ?",  # noqa: S608 - fixed fragments
            (*params, max(1, min(limit, 50)), max(0, offset)),
        )
        return [_entry(r) for r in rows], int(total[0]) if total else 0

    async def names(self, guild_id: int, text: str, limit: int = 25) -> list[str]:
        """Names for autocomplete: prefix matches first, then names containing ``text``."""
        key = name_key(text)
        rows = await self._db.fetch_all(
            "SELECT name FROM recipe_book WHERE guild_id = ? AND instr(name_key, ?) > 0 "
            "ORDER BY instr(name_key, ?) != 1, uses DESC LIMIT ?",
            (guild_id, key, key, limit),
        )
        return [r[0] for r in rows]

    async def delete(self, guild_id: int, name: str) -> bool:
        changed = await self._db.execute("DELETE FROM recipe_book WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name)))
        return changed == 1

    async def count_use(self, guild_id: int, book_id: int) -> None:
        await self._db.execute("UPDATE recipe_book SET uses = uses + 1 WHERE guild_id = ? AND id = ?", (guild_id, book_id))

    # --- cards -----------------------------------------------------------------------

    async def add_card(
        self,
        guild_id: int,
        channel_id: int,
        recipe: Mapping[str, Any],
        *,
        author_id: int | None,
        shared_by: int,
        source: str,
        source_message_id: int | None = None,
        source_channel_id: int | None = None,
        book_name: str | None = None,
        image_url: str | None = None,
    ) -> Card:
        text = recipe_text(recipe)
        now = time.time()

        async def work(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "INSERT INTO recipe_cards (guild_id, channel_id, recipe, author_id, shared_by, source, source_message_id, "
                "source_channel_id, book_name, image_url, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, channel_id, text, author_id, shared_by, source, source_message_id, source_channel_id, book_name, image_url, now),
            )
            return int(cursor.lastrowid or 0)

        card_id = await self._db.transaction(work)
        return Card(card_id, guild_id, channel_id, None, json.loads(text), author_id, shared_by, source,
                    source_message_id, source_channel_id, book_name, image_url, now)  # fmt: skip

    async def set_card_message(self, guild_id: int, card_id: int, message_id: int) -> None:
        await self._db.execute("UPDATE recipe_cards SET message_id = ? WHERE guild_id = ? AND id = ?", (message_id, guild_id, card_id))

    async def card(self, guild_id: int, card_id: int) -> Card | None:
        row = await self._db.fetch_one("SELECT * FROM recipe_cards WHERE guild_id = ? AND id = ?", (guild_id, card_id))
        return _card(row) if row else None

    async def card_by_message(self, guild_id: int, message_id: int) -> Card | None:
        row = await self._db.fetch_one(
            "SELECT * FROM recipe_cards WHERE guild_id = ? AND message_id = ? ORDER BY id DESC LIMIT 1", (guild_id, message_id)
        )
        return _card(row) if row else None

    # --- posts: lineage and attachments ------------------------------------------------

    async def record_lineage(
        self, guild_id: int, message_id: int, lineage: Lineage, attachment_ids: Iterable[int]
    ) -> None:
        """What the post ``message_id`` was made from, and its attachments (for look-ups by file)."""

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE posts SET origin = ?, parent_message_id = ?, parent_channel_id = ? WHERE message_id = ? AND guild_id = ?",
                (lineage.origin, lineage.parent_message_id, lineage.parent_channel_id, message_id, guild_id),
            )
            await conn.executemany(
                "INSERT OR IGNORE INTO post_attachments (attachment_id, message_id, guild_id) VALUES (?, ?, ?)",
                [(a, message_id, guild_id) for a in attachment_ids],
            )

        await self._db.transaction(work)

    async def lineage(self, guild_id: int, message_id: int) -> Lineage | None:
        row = await self._db.fetch_one(
            "SELECT origin, parent_message_id, parent_channel_id FROM posts WHERE guild_id = ? AND message_id = ?", (guild_id, message_id)
        )
        return Lineage(row[0], row[1], row[2]) if row else None

    async def post_for_attachment(self, guild_id: int, attachment_id: int) -> int | None:
        row = await self._db.fetch_one(
            "SELECT message_id FROM post_attachments WHERE guild_id = ? AND attachment_id = ?", (guild_id, attachment_id)
        )
        return int(row[0]) if row else None

    # --- hashes ----------------------------------------------------------------------

    async def find_by_hash(self, guild_id: int, table: Literal["loras", "models", "embeddings"], digest: str) -> str | None:
        """The name of the entry whose file hash starts with ``digest`` (sha256, AutoV2, A1111's
        TI hash) or whose tensor hash agrees with it (A1111 LoRA hash, AutoV3, SwarmUI), else None."""
        assert table in ("loras", "models", "embeddings")
        digest = digest.lower()
        if len(digest) < 8:
            return None
        upper = digest[:-1] + chr(ord(digest[-1]) + 1)
        row = await self._db.fetch_one(
            f"SELECT name FROM {table} WHERE guild_id = ? AND sha256 >= ? AND sha256 < ? LIMIT 1",  # noqa: S608 - fixed table
            (guild_id, digest, upper),
        )
        if row is None and len(digest) >= 12 and table != "embeddings":
            row = await self._db.fetch_one(
                f"SELECT name FROM {table} WHERE guild_id = ? AND a1111_hash = ? LIMIT 1",  # noqa: S608 - fixed table
                (guild_id, digest[:12]),
            )
        return row[0] if row else None

    async def find_by_file_stem(self, guild_id: int, table: Literal["loras", "models"], stem: str) -> str | None:
        return await find_by_file_stem(self._db, guild_id, table, stem)

    async def find_lora_by_civitai_version(self, guild_id: int, version: int) -> str | None:
        row = await self._db.fetch_one(
            "SELECT name FROM loras WHERE guild_id = ? AND (source LIKE ? OR source LIKE ?) LIMIT 1",
            (guild_id, f"%@{int(version)}", f"%modelVersionId={int(version)}%"),
        )
        return row[0] if row else None


async def find_by_file_stem(db: Database, guild_id: int, table: Literal["loras", "models"], stem: str) -> str | None:
    """The entry whose file is ``stem`` (``x`` matches ``x.safetensors`` and ``sub/x.safetensors``)."""
    assert table in ("loras", "models")
    escaped = stem.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    row = await db.fetch_one(
        f"SELECT name FROM {table} WHERE guild_id = ? AND (file = ? OR file LIKE ? ESCAPE '\\' OR file LIKE ? ESCAPE '\\') LIMIT 1",  # noqa: S608
        (guild_id, f"{stem}.safetensors", f"%/{escaped}.safetensors", f"{escaped}"),
    )
    return row[0] if row else None
