"""The registry: the one object the bot opens at start-up, holding one store per kind.

Each kind of record has its own store, an attribute of :class:`Registry`: ``models``,
``loras`` (with bookmarks and use counts), ``embeddings``, ``settings``, ``audit``,
``saved_recipes``, ``posts``, ``book`` (the server recipe book), ``privacy`` and
``sync_state``; ``catalogs`` caches the validation view built from several of them. Every
method takes the ``guild_id`` first and every query filters on it, so one server's records
are invisible to every other server. Admin changes write an audit row in the same
transaction as the change itself.
"""

from __future__ import annotations

from pathlib import Path

from bot.registry.audit import AuditLog
from bot.registry.catalog_cache import CatalogCache
from bot.registry.db import Database
from bot.registry.embedding_store import EmbeddingStore
from bot.registry.lora_store import LoraStore
from bot.registry.migrations import migrate
from bot.registry.model_store import ModelStore
from bot.registry.posts import PostStore
from bot.registry.privacy import PrivacyStore, SyncState
from bot.registry.recipe_book import RecipeBook
from bot.registry.saved_recipes import SavedRecipes
from bot.registry.settings_store import SettingsStore


class Registry:
    """Each server's models, LoRAs, bookmarks, saved recipes, settings, posts and audit log.

    Open with ``registry = await Registry.open(path)`` (creates the file and applies
    migrations) and ``await registry.close()`` at shutdown, or ``async with``.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        # The admin stores tell the catalog cache of each write; it is built after them
        # because it reads from them, hence the indirection through _changed.
        self.models = ModelStore(db, self._changed)
        self.loras = LoraStore(db, self._changed)
        self.embeddings = EmbeddingStore(db, self._changed)
        self.settings = SettingsStore(db, self._changed)
        #: The in-memory view bot.request.validation needs, per server (see bot.registry.catalog_cache).
        self.catalogs = CatalogCache(db, self.settings, self.models, self.embeddings)
        self.audit = AuditLog(db)
        self.saved_recipes = SavedRecipes(db)
        self.posts = PostStore(db)
        #: The server recipe book, recipe cards, lineage and hash look-ups.
        self.book = RecipeBook(db)
        #: A member's data and a departed server's deletion (see bot.registry.privacy).
        self.privacy = PrivacyStore(db)
        #: The command tree's hash as last synced with Discord.
        self.sync_state = SyncState(db)

    @classmethod
    async def open(cls, path: Path | str) -> Registry:
        """Open (or create) the SQLite file in WAL mode and bring its schema up to date."""
        db = await Database.open(Path(path))
        try:
            await migrate(db.writer)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def database(self) -> Database:
        """The open SQLite file, for the other stores that live in it (the job store).

        One writer connection per file: sharing it keeps every write in this process behind
        the same lock, so the job store and the registry never meet "database is locked".
        """
        return self._db

    def _changed(self, guild_id: int) -> None:
        self.catalogs.invalidate(guild_id)

    async def purge_departed(self, grace_s: float, now: float | None = None) -> list[int]:
        """Delete the data of servers the bot left more than ``grace_s`` ago; their ids."""
        purged = await self.privacy.purge_due(grace_s, now)
        for guild_id in purged:
            self.catalogs.forget(guild_id)
        return purged
