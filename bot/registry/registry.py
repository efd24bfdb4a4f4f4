"""The registry facade: one object the bot opens at start-up and awaits everywhere.

Every method takes the ``guild_id`` first and every query filters on it, so one server's
models, LoRAs, bookmarks, recipes, posts and audit log are invisible to every other server.
Admin changes write an audit row in the same transaction as the change itself.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from bot.registry import search
from bot.registry.catalog import Catalog, LoraTable
from bot.registry.checks import (
    SETTINGS_FIELDS,
    check_changes,
    clean_embedding,
    clean_lora,
    clean_model,
    clean_settings,
)
from bot.registry.db import Database
from bot.registry.migrations import migrate
from bot.registry.models import (
    LORA_EDITABLE,
    MODEL_EDITABLE,
    AlreadyExists,
    AuditEntry,
    Category,
    Choice,
    EmbeddingEntry,
    LoraEntry,
    ModelEntry,
    NotFound,
    PostRecord,
    RecipeUse,
    RegistryError,
    SavedRecipe,
    SearchSort,
    ServerSettings,
)
from bot.registry.privacy import PrivacyStore, SyncState
from bot.registry.recipe_book import RecipeBook
from bot.registry.recipe_book import recipe_text as _recipe_text
from bot.registry.text import clean_name, name_key

#: Saved recipes one member may keep per server.
MAX_SAVED_RECIPES = 100
_AUDIT_VALUE_LIMIT = 200

_LORA_COLUMNS = (
    "name, name_key, architecture, category, trigger_words, default_weight, recommended_min, "
    "recommended_max, file, sha256, autov2, source, description, nsfw, preview_url, added_by, "
    "added_at, uses, enabled, family, lora_format, rank, trained_clip_skip, a1111_hash"
)
_LORA_SELECT = "SELECT l.* FROM loras l"
#: Everything but the description, which validation never needs.
_CATALOG_COLUMNS = "id, name_key, " + _LORA_COLUMNS.replace("description", "'' AS description")
#: Catalogs with at least this many LoRAs build their suggestion index in a worker thread.
BACKGROUND_INDEX_THRESHOLD = 5_000
#: Servers whose catalog stays in memory, least recently used dropped first (and rebuilt from
#: the file when asked again): a catalog holds a server's whole LoRA table, and a bot in many
#: servers would otherwise keep every one it ever validated a request for.
CATALOGS_KEPT = 256
_MODEL_COLUMNS = (
    "name, name_key, architecture, file, sha256, autov2, default_width, default_height, "
    "default_steps, default_cfg, default_sampler, default_negative, description, nsfw, enabled, "
    "allowed_channels, added_by, added_at, family, default_clip_skip, prediction_type, a1111_hash, vae"
)


_LORA_COUNT = len(_LORA_COLUMNS.split(","))
_MODEL_COUNT = len(_MODEL_COLUMNS.split(","))
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


def _lora_from_row(row: sqlite3.Row) -> LoraEntry:
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
    )


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
    )


def _added(file: str, architecture: str, source: str | None) -> dict[str, Any]:
    """What the audit log says of a new entry: its file, and where it came from when known."""
    details: dict[str, Any] = {"file": file, "architecture": architecture}
    if source:
        details["source"] = source
    return details


def _audit_value(value: Any) -> Any:
    if isinstance(value, (frozenset, set, tuple)):
        value = sorted(value) if isinstance(value, (frozenset, set)) else list(value)
    if isinstance(value, str) and len(value) > _AUDIT_VALUE_LIMIT:
        return value[:_AUDIT_VALUE_LIMIT] + "…"
    if isinstance(value, Mapping):
        return {str(k): _audit_value(v) for k, v in value.items()}
    return value


def _diff(before: object, after: object, names: Iterable[str]) -> dict[str, list[Any]]:
    return {
        name: [_audit_value(getattr(before, name)), _audit_value(getattr(after, name))]
        for name in sorted(names)
        if getattr(before, name) != getattr(after, name)
    }


def _changed_columns(columns: str, before: tuple[Any, ...], after: tuple[Any, ...]) -> dict[str, Any]:
    """The columns whose stored value an edit changes, with their new values.

    An update writes only these, so it can never put back an old value of a column it did
    not mean to change (and a rename writes ``name_key`` along with ``name``).
    """
    names = [c.strip() for c in columns.split(",")]
    return {name: new for name, old, new in zip(names, before, after, strict=True) if old != new}


class Registry:
    """Each server's models, LoRAs, bookmarks, saved recipes, settings, posts and audit log.

    Open with ``registry = await Registry.open(path)`` (creates the file and applies
    migrations) and ``await registry.close()`` at shutdown, or ``async with``.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        #: The server recipe book, recipe cards, lineage and hash look-ups.
        self.book = RecipeBook(db)
        self._catalogs: dict[int, Catalog] = {}
        self._catalog_versions: dict[int, int] = {}
        self._catalog_locks: dict[int, asyncio.Lock] = {}
        self._warming: set[asyncio.Future[Catalog]] = set()
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

    # --- helpers ---------------------------------------------------------------------------

    def _invalidate(self, guild_id: int) -> None:
        self._catalog_versions[guild_id] = self._catalog_versions.get(guild_id, 0) + 1
        self._catalogs.pop(guild_id, None)

    @staticmethod
    async def _audit(
        conn: aiosqlite.Connection,
        guild_id: int,
        actor_id: int,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, target, details, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                guild_id,
                actor_id,
                action,
                target,
                json.dumps(_audit_value(dict(details or {})), ensure_ascii=False),
                time.time(),
            ),
        )

    @staticmethod
    async def _taken(conn: aiosqlite.Connection, table: str, guild_id: int, key: str) -> str | None:
        assert table in ("loras", "models", "embeddings")
        cursor = await conn.execute(
            f"SELECT name FROM {table} WHERE guild_id = ? AND name_key = ?",  # noqa: S608 - fixed table name
            (guild_id, key),
        )
        row = await cursor.fetchone()
        return row[0] if row else None

    # --- models ----------------------------------------------------------------------------

    async def add_model(self, guild_id: int, entry: ModelEntry, actor_id: int) -> ModelEntry:
        """Register a base model; its name must be new in this server (case-insensitive)."""
        model = replace(clean_model(entry), added_by=actor_id, added_at=time.time(), id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await self._taken(conn, "models", guild_id, name_key(model.name))
            if existing is not None:
                raise AlreadyExists(
                    f"A model named {existing!r} already exists in this server; "
                    "pick another name or edit that one."
                )
            cursor = await conn.execute(
                f"INSERT INTO models (guild_id, {_MODEL_COLUMNS}) VALUES (?{', ?' * _MODEL_COUNT})",  # noqa: S608
                (guild_id, *_model_values(model)),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "model.add",
                model.name,
                {"file": model.file, "architecture": model.architecture},
            )
            return int(cursor.lastrowid or 0)

        model_id = await self._db.transaction(work)
        self._invalidate(guild_id)
        return replace(model, id=model_id)

    async def get_model(self, guild_id: int, name: str) -> ModelEntry | None:
        row = await self._db.fetch_one(
            "SELECT * FROM models WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
        )
        return _model_from_row(row) if row else None

    async def list_models(self, guild_id: int) -> list[ModelEntry]:
        rows = await self._db.fetch_all(
            "SELECT * FROM models WHERE guild_id = ? ORDER BY name_key", (guild_id,)
        )
        return [_model_from_row(row) for row in rows]

    async def update_model(
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
                existing = await self._taken(conn, "models", guild_id, name_key(after.name))
                if existing is not None:
                    raise AlreadyExists(
                        f"A model named {existing!r} already exists in this server."
                    )
            changed = _changed_columns(_MODEL_COLUMNS, _model_values(before), _model_values(after))
            if not changed:
                return after  # nothing to write, nothing to audit
            assignments = ", ".join(f"{column} = ?" for column in changed)
            await conn.execute(
                f"UPDATE models SET {assignments} WHERE id = ? AND guild_id = ?",  # noqa: S608
                (*changed.values(), before.id, guild_id),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "model.update",
                before.name,
                _diff(before, after, MODEL_EDITABLE),
            )
            return after

        after = await self._db.transaction(work)
        self._invalidate(guild_id)
        return after

    async def remove_model(self, guild_id: int, name: str, actor_id: int) -> None:
        model = await self._require_model(guild_id, name)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "DELETE FROM models WHERE id = ? AND guild_id = ?", (model.id, guild_id)
            )
            await self._audit(
                conn, guild_id, actor_id, "model.remove", model.name, {"file": model.file}
            )

        await self._db.transaction(work)
        self._invalidate(guild_id)

    async def _require_model(self, guild_id: int, name: str) -> ModelEntry:
        model = await self.get_model(guild_id, name)
        if model is None:
            raise NotFound(f"No model named {name!r} in this server; `/model list` shows them.")
        return model

    async def autocomplete_models(
        self,
        guild_id: int,
        text: str,
        *,
        channel_id: int | None = None,
        nsfw_ok: bool | None = None,
    ) -> list[Choice]:
        """Enabled models whose name contains ``text``: prefix matches first, at most 25.

        ``channel_id`` hides models not allowed there; ``nsfw_ok=False`` hides NSFW models.
        """
        key = name_key(text)
        models = [m for m in await self.list_models(guild_id) if m.enabled]
        if channel_id is not None:
            models = [m for m in models if m.allowed_in(channel_id)]
        if nsfw_ok is False:
            models = [m for m in models if not m.nsfw]
        starts = [m for m in models if name_key(m.name).startswith(key)]
        contains = [m for m in models if key in name_key(m.name) and m not in starts]
        return [search.model_choice(m) for m in (starts + contains)[: search.MAX_CHOICES]]

    # --- LoRAs -----------------------------------------------------------------------------

    async def add_lora(self, guild_id: int, entry: LoraEntry, actor_id: int) -> LoraEntry:
        """Register a LoRA (see :meth:`LoraEntry.from_file_info`); returns it with its id.

        Raises AlreadyExists when the name (case-insensitive, invisible characters ignored)
        is taken in this server, RegistryError for anything else to correct.
        """
        lora = replace(clean_lora(entry), added_by=actor_id, added_at=time.time(), uses=0, id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await self._taken(conn, "loras", guild_id, name_key(lora.name))
            if existing is not None:
                raise AlreadyExists(
                    f"A LoRA named {existing!r} already exists in this server; "
                    "pick another name or edit that one with /lora edit."
                )
            cursor = await conn.execute(
                f"INSERT INTO loras (guild_id, {_LORA_COLUMNS}) VALUES (?{', ?' * _LORA_COUNT})",  # noqa: S608
                (guild_id, *_lora_values(lora)),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "lora.add",
                lora.name,
                _added(lora.file, lora.architecture, lora.source),
            )
            return int(cursor.lastrowid or 0)

        lora_id = await self._db.transaction(work)
        self._invalidate(guild_id)
        return replace(lora, id=lora_id)

    async def add_loras(self, guild_id: int, entries: Iterable[LoraEntry], actor_id: int) -> int:
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
            await self._audit(conn, guild_id, actor_id, "lora.import", f"{len(loras)} LoRAs")

        await self._db.transaction(work)
        self._invalidate(guild_id)
        return len(loras)

    async def get_lora(self, guild_id: int, name: str) -> LoraEntry | None:
        row = await self._db.fetch_one(
            f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.name_key = ?", (guild_id, name_key(name))
        )
        return _lora_from_row(row) if row else None

    async def get_lora_by_id(self, guild_id: int, lora_id: int) -> LoraEntry | None:
        """The LoRA a card's buttons name by id (ids survive renames); None if it is gone.

        Scoped to ``guild_id`` like every lookup, so a forged custom id cannot reach another
        server's entry.
        """
        row = await self._db.fetch_one(
            f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.id = ?", (guild_id, lora_id)
        )
        return _lora_from_row(row) if row else None

    async def _require_lora(self, guild_id: int, name: str) -> LoraEntry:
        lora = await self.get_lora(guild_id, name)
        if lora is None:
            raise NotFound(f"No LoRA named {name!r} in this server; try `/lora search`.")
        return lora

    async def update_lora(
        self, guild_id: int, name: str, actor_id: int, /, **changes: Any
    ) -> LoraEntry:
        """Change fields of a LoRA (see ``LORA_EDITABLE``), audited with before/after values.

        Read and written in one transaction, changed columns only (see :meth:`update_model`).
        """
        check_changes(changes, LORA_EDITABLE, "A LoRA")

        async def work(conn: aiosqlite.Connection) -> LoraEntry:
            cursor = await conn.execute(
                f"{_LORA_SELECT} WHERE l.guild_id = ? AND l.name_key = ?", (guild_id, name_key(name))
            )
            row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"No LoRA named {name!r} in this server; try `/lora search`.")
            before = _lora_from_row(row)
            after = clean_lora(replace(before, **changes))
            if name_key(after.name) != name_key(before.name):
                existing = await self._taken(conn, "loras", guild_id, name_key(after.name))
                if existing is not None:
                    raise AlreadyExists(f"A LoRA named {existing!r} already exists in this server.")
            changed = _changed_columns(_LORA_COLUMNS, _lora_values(before), _lora_values(after))
            for kept in ("added_by", "added_at", "uses"):  # not editable; uses counts on meanwhile
                changed.pop(kept, None)
            if not changed:
                return after  # nothing to write, nothing to audit
            assignments = ", ".join(f"{column} = ?" for column in changed)
            await conn.execute(
                f"UPDATE loras SET {assignments} WHERE id = ? AND guild_id = ?",  # noqa: S608
                (*changed.values(), before.id, guild_id),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "lora.update",
                before.name,
                _diff(before, after, LORA_EDITABLE),
            )
            return after

        after = await self._db.transaction(work)
        self._invalidate(guild_id)
        return after

    async def set_enabled(
        self, guild_id: int, name: str, actor_id: int, enabled: bool
    ) -> LoraEntry:
        """Disable a LoRA without losing its uses, bookmarks or history (or enable it again)."""
        return await self.update_lora(guild_id, name, actor_id, enabled=enabled)

    async def remove_lora(self, guild_id: int, name: str, actor_id: int) -> None:
        """Delete a LoRA; its bookmarks go with it."""
        lora = await self._require_lora(guild_id, name)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "DELETE FROM loras WHERE id = ? AND guild_id = ?", (lora.id, guild_id)
            )
            await self._audit(
                conn, guild_id, actor_id, "lora.remove", lora.name, {"file": lora.file}
            )

        await self._db.transaction(work)
        self._invalidate(guild_id)

    async def registered_lora_files(self, guild_id: int) -> set[str]:
        """Files already registered here, so ``/lora add`` offers only the others."""
        rows = await self._db.fetch_all("SELECT file FROM loras WHERE guild_id = ?", (guild_id,))
        return {row[0] for row in rows}

    async def count_loras(self, guild_id: int) -> int:
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

    async def search_loras(
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
        return [_lora_from_row(row) for row in rows]

    async def autocomplete_loras(
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
            return [search.lora_choice(_lora_from_row(r)) for r in rows]
        low, high = search.prefix_bounds(key)
        rows = await self._db.fetch_all(
            f"{_LORA_SELECT} WHERE {where} AND l.name_key >= ? AND l.name_key < ? "
            f"ORDER BY {first}l.name_key LIMIT ?",
            (*params, low, high, *first_params, limit),
        )
        found = [_lora_from_row(r) for r in rows]
        match = search.fts_query(text, columns=search.AUTOCOMPLETE_COLUMNS)
        if len(found) < limit and match is not None:
            rows = await self._db.fetch_all(
                f"SELECT l.* FROM {search.FTS_SOURCE} "  # noqa: S608 - fixed fragments
                f"WHERE lora_fts MATCH ? AND {where} LIMIT ?",
                (match, *params, limit + len(found)),
            )
            found = search.merge_unique(found, [_lora_from_row(r) for r in rows], limit)
        if family:  # stable: each group keeps its order, the model's family first
            found.sort(key=lambda lora: lora.family != family)
        return [search.lora_choice(lora) for lora in found]

    # --- embeddings ------------------------------------------------------------------------

    async def add_embedding(self, guild_id: int, entry: EmbeddingEntry, actor_id: int) -> EmbeddingEntry:
        """Register a textual-inversion embedding; its name is what prompts call it by."""
        embedding = replace(clean_embedding(entry), added_by=actor_id, added_at=time.time(), id=None)

        async def work(conn: aiosqlite.Connection) -> int:
            existing = await self._taken(conn, "embeddings", guild_id, name_key(embedding.name))
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
            await self._audit(
                conn, guild_id, actor_id, "embedding.add", embedding.name,
                _added(embedding.file, embedding.architecture, embedding.source),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

        embedding_id = await self._db.transaction(work)
        self._invalidate(guild_id)
        return replace(embedding, id=embedding_id)

    async def get_embedding(self, guild_id: int, name: str) -> EmbeddingEntry | None:
        row = await self._db.fetch_one(
            "SELECT * FROM embeddings WHERE guild_id = ? AND name_key = ?", (guild_id, name_key(name))
        )
        return _embedding_from_row(row) if row else None

    async def list_embeddings(self, guild_id: int) -> list[EmbeddingEntry]:
        rows = await self._db.fetch_all(
            "SELECT * FROM embeddings WHERE guild_id = ? ORDER BY name_key", (guild_id,)
        )
        return [_embedding_from_row(row) for row in rows]

    async def remove_embedding(self, guild_id: int, name: str, actor_id: int) -> None:
        embedding = await self.get_embedding(guild_id, name)
        if embedding is None:
            raise NotFound(f"No embedding named {name!r} in this server; `/embedding list` shows them.")

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM embeddings WHERE id = ? AND guild_id = ?", (embedding.id, guild_id))
            await self._audit(conn, guild_id, actor_id, "embedding.remove", embedding.name, {"file": embedding.file})

        await self._db.transaction(work)
        self._invalidate(guild_id)

    async def autocomplete_embeddings(
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
        lora = await self.get_lora(guild_id, lora_name)
        if lora is None:
            return False
        changed = await self._db.execute(
            "DELETE FROM bookmarks WHERE guild_id = ? AND user_id = ? AND lora_id = ?",
            (guild_id, user_id, lora.id),
        )
        return changed == 1

    async def bookmarks(self, guild_id: int, user_id: int) -> list[LoraEntry]:
        """A member's bookmarked LoRAs in this server, most recently bookmarked first."""
        rows = await self._db.fetch_all(
            f"{_LORA_SELECT} JOIN bookmarks b ON b.lora_id = l.id "
            "WHERE b.guild_id = ? AND b.user_id = ? AND l.guild_id = ? ORDER BY b.created_at DESC, l.id DESC",
            (guild_id, user_id, guild_id),
        )
        return [_lora_from_row(row) for row in rows]

    # --- saved recipes ---------------------------------------------------------------------

    async def save_recipe(
        self, guild_id: int, user_id: int, name: str, recipe: Mapping[str, Any]
    ) -> SavedRecipe:
        """Save (or overwrite, by name) one of a member's recipes, e.g. ``Recipe.to_json()``."""
        clean = clean_name(name, what="recipe name")
        text = _recipe_text(recipe)
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

    async def saved_recipes(self, guild_id: int, user_id: int) -> list[SavedRecipe]:
        rows = await self._db.fetch_all(
            "SELECT * FROM saved_recipes WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, id DESC",
            (guild_id, user_id),
        )
        return [
            SavedRecipe(r["id"], r["name"], json.loads(r["recipe"]), r["created_at"]) for r in rows
        ]

    async def get_recipe(self, guild_id: int, user_id: int, name: str) -> SavedRecipe | None:
        row = await self._db.fetch_one(
            "SELECT * FROM saved_recipes WHERE guild_id = ? AND user_id = ? AND name_key = ?",
            (guild_id, user_id, name_key(name)),
        )
        return (
            SavedRecipe(row["id"], row["name"], json.loads(row["recipe"]), row["created_at"])
            if row
            else None
        )

    async def delete_recipe(self, guild_id: int, user_id: int, name: str) -> bool:
        changed = await self._db.execute(
            "DELETE FROM saved_recipes WHERE guild_id = ? AND user_id = ? AND name_key = ?",
            (guild_id, user_id, name_key(name)),
        )
        return changed == 1

    # --- settings --------------------------------------------------------------------------

    async def get_settings(self, guild_id: int) -> ServerSettings:
        """The server's settings; defaults until an admin changes something."""
        row = await self._db.fetch_one(
            "SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return ServerSettings.from_json(json.loads(row[0])) if row else ServerSettings()

    async def update_settings(
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
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "settings.update",
                "settings",
                _diff(before, after, changes),
            )
            return after

        after = await self._db.transaction(work)
        self._invalidate(guild_id)
        return after

    async def recipes_using(
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

    # --- data rights -----------------------------------------------------------------------

    async def purge_departed(self, grace_s: float, now: float | None = None) -> list[int]:
        """Delete the data of servers the bot left more than ``grace_s`` ago; their ids."""
        purged = await self.privacy.purge_due(grace_s, now)
        for guild_id in purged:
            self._invalidate(guild_id)
            lock = self._catalog_locks.get(guild_id)
            if lock is None or not lock.locked():
                # No catalog build under way: nothing compares against its version, so the
                # server leaves no entry behind (a later build starts from version 0, cached).
                self._catalog_locks.pop(guild_id, None)
                self._catalog_versions.pop(guild_id, None)
        return purged

    # --- audit -----------------------------------------------------------------------------

    async def audit_log(
        self,
        guild_id: int,
        limit: int = 50,
        *,
        actor_id: int | None = None,
        target: str | None = None,
    ) -> list[AuditEntry]:
        """Admin changes in this server, newest first; optionally one admin's or one entry's."""
        clauses, params = ["guild_id = ?"], [guild_id]
        if actor_id is not None:
            clauses.append("actor_id = ?")
            params.append(actor_id)
        if target is not None:
            clauses.append("lower(target) = lower(?)")
            params.append(target)
        rows = await self._db.fetch_all(
            f"SELECT * FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*params, max(1, min(int(limit), 500))),
        )
        return [
            AuditEntry(
                r["id"], r["actor_id"], r["action"], r["target"], json.loads(r["details"]), r["at"]
            )
            for r in rows
        ]

    # --- posted images ---------------------------------------------------------------------

    async def record_post(
        self,
        guild_id: int,
        channel_id: int,
        message_id: int,
        user_id: int,
        recipe: Mapping[str, Any],
    ) -> PostRecord:
        """Remember the recipe behind a posted image so its buttons work after a restart."""
        text = _recipe_text(recipe)
        now = time.time()
        await self._db.execute(
            "INSERT INTO posts (message_id, guild_id, channel_id, user_id, recipe, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET recipe = excluded.recipe "
            "WHERE posts.guild_id = excluded.guild_id",
            (message_id, guild_id, channel_id, user_id, text, now),
        )
        return PostRecord(guild_id, channel_id, message_id, user_id, json.loads(text), now)

    async def get_post(self, guild_id: int, message_id: int) -> PostRecord | None:
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

    async def recent_posts(self, guild_id: int, user_id: int, channel_id: int | None, limit: int = 1) -> list[PostRecord]:
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

    async def delete_post(self, guild_id: int, message_id: int) -> bool:
        changed = await self._db.execute(
            "DELETE FROM posts WHERE message_id = ? AND guild_id = ?", (message_id, guild_id)
        )
        return changed == 1

    # --- validation snapshot ---------------------------------------------------------------

    async def catalog(self, guild_id: int) -> Catalog:
        """The in-memory view :func:`bot.validation.validate` needs, cached until a write.

        Concurrent callers share one build; a build raced by a write is used once, not cached.
        """
        cached = self._catalogs.pop(guild_id, None)
        if cached is not None:
            self._catalogs[guild_id] = cached  # put back last: the most recently used
            return cached
        lock = self._catalog_locks.setdefault(guild_id, asyncio.Lock())
        async with lock:
            cached = self._catalogs.get(guild_id)
            if cached is not None:
                return cached
            version = self._catalog_versions.get(guild_id, 0)
            settings = await self.get_settings(guild_id)
            models = await self.list_models(guild_id)
            rows = await self._db.fetch_all(
                f"SELECT {_CATALOG_COLUMNS} FROM loras WHERE guild_id = ?",  # noqa: S608
                (guild_id,),
            )
            table = LoraTable({row["name_key"]: row for row in rows}, _lora_from_row)
            catalog = Catalog(guild_id, settings, models, table, await self.list_embeddings(guild_id))
            if len(table) >= BACKGROUND_INDEX_THRESHOLD:
                # Build "did you mean" in a worker thread now rather than inside the first
                # /imagine with a typo, which would stall the event loop for a large server.
                self._warming.add(asyncio.get_running_loop().run_in_executor(None, catalog.warm))
                self._warming = {f for f in self._warming if not f.done()}
            if self._catalog_versions.get(guild_id, 0) == version:
                self._catalogs[guild_id] = catalog
                while len(self._catalogs) > CATALOGS_KEPT:
                    del self._catalogs[next(iter(self._catalogs))]
            return catalog
