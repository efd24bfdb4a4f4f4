"""Each server's settings (``Registry.settings``): one JSON row, defaults until an admin
changes something.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import aiosqlite

from bot.registry import audit
from bot.registry.checks import SETTINGS_FIELDS, check_changes, clean_settings
from bot.registry.db import Database
from bot.registry.models import ServerSettings
from bot.registry.writes import Changed


class SettingsStore:
    """A server's settings; ``changed`` is told of every write (the catalog cache)."""

    def __init__(self, db: Database, changed: Changed) -> None:
        self._db = db
        self._changed = changed

    async def get(self, guild_id: int) -> ServerSettings:
        """The server's settings; defaults until an admin changes something."""
        row = await self._db.fetch_one(
            "SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return ServerSettings.from_json(json.loads(row[0])) if row else ServerSettings()

    async def update(
        self, guild_id: int, actor_id: int, /, **changes: Any
    ) -> ServerSettings:
        """Change settings (field names of :class:`ServerSettings`), all checked together."""
        check_changes(changes, SETTINGS_FIELDS, "Settings")

        async def work(conn: aiosqlite.Connection) -> ServerSettings:
            # Read inside the transaction: the settings are one row, so a read before it
            # would let two admins' concurrent changes of different settings undo each other.
            cursor = await conn.execute("SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,))
            row = await cursor.fetchone()
            before = ServerSettings.from_json(json.loads(row[0])) if row else ServerSettings()
            after = clean_settings(replace(before, **changes))
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, settings) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings",
                (guild_id, json.dumps(after.to_json())),
            )
            await audit.record(
                conn,
                guild_id,
                actor_id,
                "settings.update",
                "settings",
                audit.diff(before, after, changes),
            )
            return after

        after = await self._db.transaction(work)
        self._changed(guild_id)
        return after
