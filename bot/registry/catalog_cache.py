"""The validation catalogs kept in memory (``Registry.catalogs``), one per recently used server.

A catalog is the in-memory view :func:`bot.request.validation.validate` needs (settings, models,
LoRAs, embeddings). It is built from the file on first use, kept until a write to that
server invalidates it, and at most :data:`CATALOGS_KEPT` servers' catalogs are kept.
"""

from __future__ import annotations

import asyncio

from bot.registry.catalog import Catalog, LoraTable
from bot.registry.db import Database
from bot.registry.embedding_store import EmbeddingStore
from bot.registry.lora_store import CATALOG_COLUMNS, lora_from_row
from bot.registry.model_store import ModelStore
from bot.registry.settings_store import SettingsStore

#: Catalogs with at least this many LoRAs build their suggestion index in a worker thread.
BACKGROUND_INDEX_THRESHOLD = 5_000
#: Servers whose catalog stays in memory, least recently used dropped first (and rebuilt from
#: the file when asked again): a catalog holds a server's whole LoRA table, and a bot in many
#: servers would otherwise keep every one it ever validated a request for.
CATALOGS_KEPT = 256


class CatalogCache:
    """Each server's catalog, cached until a write; see :meth:`get` and :meth:`invalidate`."""

    def __init__(
        self,
        db: Database,
        settings: SettingsStore,
        models: ModelStore,
        embeddings: EmbeddingStore,
    ) -> None:
        self._db = db
        self._settings = settings
        self._models = models
        self._embeddings = embeddings
        self._cached: dict[int, Catalog] = {}
        self._versions: dict[int, int] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._warming: set[asyncio.Future[Catalog]] = set()

    def invalidate(self, guild_id: int) -> None:
        """Drop the server's catalog; a build under way is used once but not cached."""
        self._versions[guild_id] = self._versions.get(guild_id, 0) + 1
        self._cached.pop(guild_id, None)

    def forget(self, guild_id: int) -> None:
        """Drop everything kept for a server whose data was deleted."""
        self.invalidate(guild_id)
        lock = self._locks.get(guild_id)
        if lock is None or not lock.locked():
            # No catalog build under way: nothing compares against its version, so the
            # server leaves no entry behind (a later build starts from version 0, cached).
            self._locks.pop(guild_id, None)
            self._versions.pop(guild_id, None)

    async def get(self, guild_id: int) -> Catalog:
        """The server's catalog, cached until a write.

        Concurrent callers share one build; a build raced by a write is used once, not cached.
        """
        cached = self._cached.pop(guild_id, None)
        if cached is not None:
            self._cached[guild_id] = cached  # put back last: the most recently used
            return cached
        lock = self._locks.setdefault(guild_id, asyncio.Lock())
        async with lock:
            cached = self._cached.get(guild_id)
            if cached is not None:
                return cached
            version = self._versions.get(guild_id, 0)
            settings = await self._settings.get(guild_id)
            models = await self._models.all(guild_id)
            rows = await self._db.fetch_all(
                f"SELECT {CATALOG_COLUMNS} FROM loras WHERE guild_id = ?",  # noqa: S608
                (guild_id,),
            )
            table = LoraTable({row["name_key"]: row for row in rows}, lora_from_row)
            catalog = Catalog(guild_id, settings, models, table, await self._embeddings.all(guild_id))
            if len(table) >= BACKGROUND_INDEX_THRESHOLD:
                # Build "did you mean" in a worker thread now rather than inside the first
                # /imagine with a typo, which would stall the event loop for a large server.
                self._warming.add(asyncio.get_running_loop().run_in_executor(None, catalog.warm))
                self._warming = {f for f in self._warming if not f.done()}
            if self._versions.get(guild_id, 0) == version:
                self._cached[guild_id] = catalog
                while len(self._cached) > CATALOGS_KEPT:
                    del self._cached[next(iter(self._cached))]
            return catalog
