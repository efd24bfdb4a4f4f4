"""Members' own saved recipes (``Registry.saved_recipes``), and which recipes name an entry.

A member's recipes are private to them in one server; the server's shared recipe book is
:mod:`bot.registry.recipe_book`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import aiosqlite

from bot.registry.db import Database
from bot.registry.models import (
    EmbeddingEntry,
    LoraEntry,
    ModelEntry,
    RecipeUse,
    RegistryError,
    SavedRecipe,
)
from bot.registry.recipe_book import recipe_text
from bot.registry.text import clean_name, name_key

#: Saved recipes one member may keep per server.
MAX_SAVED_RECIPES = 100


class SavedRecipes:
    """Each member's saved recipes, by name, at most :data:`MAX_SAVED_RECIPES` per server."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(
        self, guild_id: int, user_id: int, name: str, recipe: Mapping[str, Any]
    ) -> SavedRecipe:
        """Save (or overwrite, by name) one of a member's recipes, e.g. ``Recipe.to_json()``."""
        clean = clean_name(name, what="recipe name")
        text = recipe_text(recipe)
        now = time.time()

        async def work(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "SELECT count(*) FROM saved_recipes WHERE guild_id = ? AND user_id = ? AND name_key != ?",
                (guild_id, user_id, name_key(clean)),
            )
            row = await cursor.fetchone()
            if row and row[0] >= MAX_SAVED_RECIPES:
                raise RegistryError(
                    f"You already have {MAX_SAVED_RECIPES} saved recipes here; "
                    "delete one before saving another."
                )
            cursor = await conn.execute(
                "INSERT INTO saved_recipes (guild_id, user_id, name, name_key, recipe, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, user_id, name_key) DO UPDATE SET "
                "name = excluded.name, recipe = excluded.recipe, created_at = excluded.created_at "
                "RETURNING id",
                (guild_id, user_id, clean, name_key(clean), text, now),
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        recipe_id = await self._db.transaction(work)
        return SavedRecipe(recipe_id, clean, json.loads(text), now)

    async def of_member(self, guild_id: int, user_id: int) -> list[SavedRecipe]:
        rows = await self._db.fetch_all(
            "SELECT * FROM saved_recipes WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, id DESC",
            (guild_id, user_id),
        )
        return [
            SavedRecipe(r["id"], r["name"], json.loads(r["recipe"]), r["created_at"]) for r in rows
        ]

    async def get(self, guild_id: int, user_id: int, name: str) -> SavedRecipe | None:
        row = await self._db.fetch_one(
            "SELECT * FROM saved_recipes WHERE guild_id = ? AND user_id = ? AND name_key = ?",
            (guild_id, user_id, name_key(name)),
        )
        return (
            SavedRecipe(row["id"], row["name"], json.loads(row["recipe"]), row["created_at"])
            if row
            else None
        )

    async def delete(self, guild_id: int, user_id: int, name: str) -> bool:
        changed = await self._db.execute(
            "DELETE FROM saved_recipes WHERE guild_id = ? AND user_id = ? AND name_key = ?",
            (guild_id, user_id, name_key(name)),
        )
        return changed == 1

    async def using(
        self,
        guild_id: int,
        *,
        model: ModelEntry | None = None,
        lora: LoraEntry | None = None,
        embedding: EmbeddingEntry | None = None,
    ) -> list[RecipeUse]:
        """Saved recipes (members' own and the server's recipe book) that name ``model``,
        ``lora`` or ``embedding``, by name or by file.

        Recipes keep the names and files they were saved with, so both are compared: a
        recipe saved before a rename still counts.
        """
        if model is not None:
            match = "(lower(json_extract(recipe, '$.model_name')) = lower(?2) OR json_extract(recipe, '$.model') = ?3)"
            params: tuple[Any, ...] = (guild_id, model.name, model.file)
        elif lora is not None or embedding is not None:
            entry, array = (lora, "$.loras") if lora is not None else (embedding, "$.embeddings")
            assert entry is not None
            match = (
                "EXISTS (SELECT 1 FROM json_each(recipe, ?4) WHERE "
                "lower(json_extract(value, '$.name')) = lower(?2) OR json_extract(value, '$.file') = ?3)"
            )
            params = (guild_id, entry.name, entry.file, array)
        else:
            raise ValueError("name a model, a LoRA or an embedding")
        rows = await self._db.fetch_all(
            f"SELECT user_id, name, 0 AS in_book FROM saved_recipes WHERE guild_id = ?1 AND {match} "  # noqa: S608 - fixed fragments
            f"UNION ALL SELECT author_id, name, 1 FROM recipe_book WHERE guild_id = ?1 AND {match} "
            "ORDER BY in_book, name",
            params,
        )
        return [RecipeUse(int(r["user_id"]), r["name"], bool(r["in_book"])) for r in rows]
