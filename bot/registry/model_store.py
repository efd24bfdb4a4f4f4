"""Each server's base models (``Registry.models``): registering, editing, listing them.

Every method takes the ``guild_id`` first and every query filters on it. Admin changes write
an audit row in the same transaction as the change (see :mod:`bot.registry.audit`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiosqlite

from bot.registry import audit, search
from bot.registry.checks import check_changes, clean_model
from bot.registry.db import Database
from bot.registry.models import MODEL_EDITABLE, AlreadyExists, Choice, ModelEntry, NotFound
from bot.registry.text import name_key
from bot.registry.writes import Changed, changed_columns, taken, write_changes

_MODEL_COLUMNS = (
    "name, name_key, architecture, file, sha256, autov2, default_width, default_height, "
    "default_steps, default_cfg, default_sampler, default_negative, description, nsfw, enabled, "
    "allowed_channels, added_by, added_at, family, default_clip_skip, prediction_type, a1111_hash, vae, variant, "
    "speed_profile, fast_with"
)
_MODEL_COUNT = len(_MODEL_COLUMNS.split(","))


def _model_from_row(row: sqlite3.Row) -> ModelEntry:
    return ModelEntry(
        id=row["id"],
        name=row["name"],
        architecture=row["architecture"],
        file=row["file"],
        sha256=row["sha256"],
        autov2=row["autov2"],
        default_width=row["default_width"],
        default_height=row["default_height"],
        default_steps=row["default_steps"],
        default_cfg=row["default_cfg"],
        default_sampler=row["default_sampler"],
        default_negative=row["default_negative"],
        description=row["description"],
        nsfw=bool(row["nsfw"]),
        enabled=bool(row["enabled"]),
        allowed_channel_ids=frozenset(json.loads(row["allowed_channels"])),
        added_by=row["added_by"],
        added_at=row["added_at"],
        family=row["family"],
        default_clip_skip=row["default_clip_skip"],
        prediction_type=row["prediction_type"],
        a1111_hash=row["a1111_hash"],
        vae=row["vae"],
        variant=row["variant"],
        speed_profile=row["speed_profile"],
        fast_with=row["fast_with"],
    )


def _model_values(model: ModelEntry) -> tuple[Any, ...]:
    return (
        model.name,
        name_key(model.name),
        model.architecture,
        model.file,
        model.sha256,
        model.autov2,
        model.default_width,
        model.default_height,
        model.default_steps,
        model.default_cfg,
        model.default_sampler,
        model.default_negative,
        model.description,
        int(model.nsfw),
        int(model.enabled),
        json.dumps(sorted(model.allowed_channel_ids)),
        model.added_by,
        model.added_at,
        model.family,
        model.default_clip_skip,
        model.prediction_type,
        model.a1111_hash,
        model.vae,
        model.variant,
        model.speed_profile,
        model.fast_with,
    )


class ModelStore:
    """A server's base models; ``changed`` is told of every write (the catalog cache)."""

    def __init__(self, db: Database, changed: Changed) -> None:
        self._db = db
        self._changed = changed

    async def add(self, guild_id: int, entry: ModelEntry, actor_id: int) -> ModelEntry:
        """Register a base model; its name must be new in this server (case-insensitive)."""
        model = replace(clean_model(entry), added_by=actor_id, added_at=time.time(), id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await taken(conn, "models", guild_id, name_key(model.name))
            if existing is not None:
                raise AlreadyExists(
                    f"A model named {existing!r} already exists in this server; "
                    "pick another name or edit that one."
                )
            cursor = await conn.execute(
                f"INSERT INTO models (guild_id, {_MODEL_COLUMNS}) VALUES (?{', ?' * _MODEL_COUNT})",  # noqa: S608
                (guild_id, *_model_values(model)),
            )
            await audit.record(
                conn,
                guild_id,
                actor_id,
                "model.add",
                model.name,
                {"file": model.file, "architecture": model.architecture},
            )
            return int(cursor.lastrowid or 0)

        model_id = await self._db.transaction(work)
        self._changed(guild_id)
        return replace(model, id=model_id)

    async def get(self, guild_id: int, name: str) -> ModelEntry | None:
        row = await self._db.fetch_one(
            "SELECT * FROM models WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
        )
        return _model_from_row(row) if row else None

    async def all(self, guild_id: int) -> list[ModelEntry]:
        """Every model of this server, by name."""
        rows = await self._db.fetch_all(
            "SELECT * FROM models WHERE guild_id = ? ORDER BY name_key", (guild_id,)
        )
        return [_model_from_row(row) for row in rows]

    async def update(
        self, guild_id: int, name: str, actor_id: int, /, **changes: Any
    ) -> ModelEntry:
        """Change fields of a model (see ``MODEL_EDITABLE``); a rename keeps names unique.

        The entry is read inside the write transaction and only the changed columns are
        written, so two admins editing different fields at once both keep their change, and
        the audit row's before/after values are the ones really replaced.
        """
        check_changes(changes, MODEL_EDITABLE, "A model")

        async def work(conn: aiosqlite.Connection) -> ModelEntry:
            cursor = await conn.execute(
                "SELECT * FROM models WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
            )
            row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"No model named {name!r} in this server; `/model list` shows them.")
            before = _model_from_row(row)
            after = clean_model(replace(before, **changes))
            if name_key(after.name) != name_key(before.name):
                existing = await taken(conn, "models", guild_id, name_key(after.name))
                if existing is not None:
                    raise AlreadyExists(
                        f"A model named {existing!r} already exists in this server."
                    )
            changed = changed_columns(_MODEL_COLUMNS, _model_values(before), _model_values(after))
            if not changed:
                return after  # nothing to write, nothing to audit
            await write_changes(conn, "models", guild_id, before.id, changed)
            await audit.record(
                conn,
                guild_id,
                actor_id,
                "model.update",
                before.name,
                audit.diff(before, after, MODEL_EDITABLE),
            )
            return after

        after = await self._db.transaction(work)
        self._changed(guild_id)
        return after

    async def remove(self, guild_id: int, name: str, actor_id: int) -> None:
        model = await self.get(guild_id, name)
        if model is None:
            raise NotFound(f"No model named {name!r} in this server; `/model list` shows them.")

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "DELETE FROM models WHERE id = ? AND guild_id = ?", (model.id, guild_id)
            )
            await audit.record(
                conn, guild_id, actor_id, "model.remove", model.name, {"file": model.file}
            )

        await self._db.transaction(work)
        self._changed(guild_id)

    async def autocomplete(
        self,
        guild_id: int,
        text: str,
        *,
        channel_id: int | None = None,
        nsfw_ok: bool | None = None,
        where: Callable[[ModelEntry], bool] | None = None,
    ) -> list[Choice]:
        """Enabled models whose name contains ``text``: prefix matches first, at most 25.

        ``channel_id`` hides models not allowed there; ``nsfw_ok=False`` hides NSFW models;
        ``where`` keeps only the models it says yes to (``/edit``: edit models).
        """
        key = name_key(text)
        models = [m for m in await self.all(guild_id) if m.enabled and (where is None or where(m))]
        if channel_id is not None:
            models = [m for m in models if m.allowed_in(channel_id)]
        if nsfw_ok is False:
            models = [m for m in models if not m.nsfw]
        starts = [m for m in models if name_key(m.name).startswith(key)]
        contains = [m for m in models if key in name_key(m.name) and m not in starts]
        return [search.model_choice(m) for m in (starts + contains)[: search.MAX_CHOICES]]
