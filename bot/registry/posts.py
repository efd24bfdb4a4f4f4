"""The recipe behind each posted image (``Registry.posts``), so its buttons work after a
restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from bot.registry.db import Database
from bot.registry.models import PostRecord
from bot.registry.recipe_book import recipe_text


class PostStore:
    """Posted images' recipes, keyed by message id and scoped to their server."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self,
        guild_id: int,
        channel_id: int,
        message_id: int,
        user_id: int,
        recipe: Mapping[str, Any],
    ) -> PostRecord:
        """Remember the recipe behind a posted image so its buttons work after a restart."""
        text = recipe_text(recipe)
        now = time.time()
        await self._db.execute(
            "INSERT INTO posts (message_id, guild_id, channel_id, user_id, recipe, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET recipe = excluded.recipe "
            "WHERE posts.guild_id = excluded.guild_id",
            (message_id, guild_id, channel_id, user_id, text, now),
        )
        return PostRecord(guild_id, channel_id, message_id, user_id, json.loads(text), now)

    async def get(self, guild_id: int, message_id: int) -> PostRecord | None:
        row = await self._db.fetch_one(
            "SELECT * FROM posts WHERE message_id = ? AND guild_id = ?", (message_id, guild_id)
        )
        if row is None:
            return None
        return PostRecord(
            row["guild_id"],
            row["channel_id"],
            row["message_id"],
            row["user_id"],
            json.loads(row["recipe"]),
            row["created_at"],
        )

    async def recent(self, guild_id: int, user_id: int, channel_id: int | None, limit: int = 1) -> list[PostRecord]:
        """A member's latest results here (newest first), for "save my last image"."""
        rows = await self._db.fetch_all(
            "SELECT * FROM posts WHERE guild_id = ? AND user_id = ? AND (? IS NULL OR channel_id = ?) "
            "ORDER BY created_at DESC LIMIT ?",
            (guild_id, user_id, channel_id, channel_id, max(1, min(limit, 50))),
        )
        return [
            PostRecord(r["guild_id"], r["channel_id"], r["message_id"], r["user_id"], json.loads(r["recipe"]), r["created_at"])
            for r in rows
        ]

    async def delete(self, guild_id: int, message_id: int) -> bool:
        changed = await self._db.execute(
            "DELETE FROM posts WHERE message_id = ? AND guild_id = ?", (message_id, guild_id)
        )
        return changed == 1
