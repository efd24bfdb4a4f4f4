"""Schema migrations: from an empty file and from every earlier version, forward only."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiosqlite
import pytest

from bot.registry import Registry, RegistryError
from bot.registry.migrations import LATEST_VERSION, current_version, load_migrations, migrate

from .conftest import ADMIN, GUILD, lora


def test_at_least_two_consecutive_steps() -> None:
    migrations = load_migrations()
    assert len(migrations) >= 2
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


async def test_empty_file_reaches_latest_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    reg = await Registry.open(path)
    await reg.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {
            "models",
            "loras",
            "bookmarks",
            "guild_settings",
            "audit_log",
            "lora_fts",
            "saved_recipes",
            "posts",
        } <= tables
        fk_targets = {r[2] for r in conn.execute("PRAGMA foreign_key_list(bookmarks)")}
        assert fk_targets == {"loras"}
    finally:
        conn.close()


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    reg = await Registry.open(path)
    await reg.loras.add(GUILD, lora("keep me"), ADMIN)
    await reg.close()
    reg = await Registry.open(path)
    try:
        assert (await reg.loras.get(GUILD, "keep me")) is not None
    finally:
        await reg.close()


def _seed_rows(conn: sqlite3.Connection, version: int) -> None:
    """Insert data the way the schema at ``version`` allows."""
    now = time.time()
    if version >= 1:
        conn.execute(
            "INSERT INTO loras (guild_id, name, name_key, architecture, category, trigger_words, "
            "default_weight, recommended_min, recommended_max, file, description, added_by, added_at) "
            "VALUES (?, 'Old Timer', 'old timer', 'sd15', 'style', '[\"vintage\"]', 0.8, 0, 1, "
            "'old.safetensors', 'sepia photographs', 5, ?)",
            (GUILD, now),
        )
        conn.execute(
            "INSERT INTO bookmarks (guild_id, user_id, lora_id, created_at) VALUES (?, 9, 1, ?)",
            (GUILD, now),
        )
    if version >= 3:
        conn.execute(
            "INSERT INTO posts (message_id, guild_id, channel_id, user_id, recipe, created_at) "
            "VALUES (555, ?, 1, 9, '{\"seed\": 4}', ?)",
            (GUILD, now),
        )
    conn.commit()


@pytest.mark.parametrize("start", range(1, LATEST_VERSION))
async def test_upgrade_from_every_earlier_version_keeps_data(tmp_path: Path, start: int) -> None:
    path = tmp_path / f"v{start}.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=start) == start
    raw = sqlite3.connect(path)
    _seed_rows(raw, start)
    raw.close()

    reg = await Registry.open(path)
    try:
        old = await reg.loras.get(GUILD, "OLD TIMER")
        assert old is not None and old.trigger_words == ("vintage",) and old.default_weight == 0.8
        # Rows from before the FTS migration are searchable afterwards.
        assert [x.name for x in await reg.loras.search(GUILD, "sepia")] == ["Old Timer"]
        assert [x.name for x in await reg.loras.search(GUILD, "vint")] == ["Old Timer"]
        assert [x.name for x in await reg.loras.bookmarked_by(GUILD, 9)] == ["Old Timer"]
        await reg.loras.add(GUILD, lora("newcomer"), ADMIN)
        assert len(await reg.loras.search(GUILD, "")) == 2
    finally:
        await reg.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    raw.close()


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    raw.close()
    with pytest.raises(RegistryError, match="newer than this Atelier"):
        await Registry.open(path)


async def test_partial_target_then_latest(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "steps.db", isolation_level=None) as conn:
        for version in range(1, LATEST_VERSION + 1):
            assert await migrate(conn, target=version) == version
            assert await current_version(conn) == version
        assert await migrate(conn) == LATEST_VERSION


async def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    folder = tmp_path / "schema"
    folder.mkdir()
    (folder / "001_base.sql").write_text("CREATE TABLE kept (x INTEGER);")
    (folder / "002_broken.sql").write_text(
        "CREATE TABLE half_done (y INTEGER);\nINSERT INTO kept VALUES (1);\nTHIS IS NOT SQL;"
    )
    async with aiosqlite.connect(tmp_path / "broken.db", isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn, folder=folder)
        assert await current_version(conn) == 1
        tables = {
            r[0]
            for r in await conn.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        assert tables == {"kept"}
        assert list(await conn.execute_fetchall("SELECT count(*) FROM kept")) == [(0,)]


def test_gaps_in_numbering_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "003_c.sql").write_text("SELECT 1;")
    with pytest.raises(RuntimeError, match="consecutive"):
        load_migrations(tmp_path)


#: Every row of each table migration 010 rebuilds (and of bookmarks, which it must keep).
_ALL_ROWS = {
    "models": "SELECT * FROM models ORDER BY rowid",
    "loras": "SELECT * FROM loras ORDER BY rowid",
    "embeddings": "SELECT * FROM embeddings ORDER BY rowid",
    "bookmarks": "SELECT * FROM bookmarks ORDER BY rowid",
}


def _schema_objects(conn: sqlite3.Connection, kind: str) -> dict[str, str]:
    return {
        name: sql
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = ? AND sql IS NOT NULL", (kind,))
    }


async def test_architecture_names_migration_drops_the_check_and_keeps_every_row(tmp_path: Path) -> None:
    """Migration 010 rebuilds models, loras and embeddings without the CHECK that listed the
    architectures: every row (ids included), bookmark, index, trigger and foreign key survives,
    through Registry.open as production runs it (foreign keys on, so a careless rebuild would
    cascade the bookmarks away)."""
    path = tmp_path / "v9.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=9) == 9
    raw = sqlite3.connect(path)
    _seed_rows(raw, 9)
    now = time.time()
    raw.execute(
        "INSERT INTO models (guild_id, name, name_key, architecture, file, default_width, default_height, "
        "default_steps, default_cfg, default_sampler, added_by, added_at, family, vae) "
        "VALUES (?, 'Pony XL', 'pony xl', 'sdxl', 'pony.safetensors', 1024, 1024, 25, 6.5, 'Euler a', 5, ?, 'pony', 'vae.safetensors')",
        (GUILD, now),
    )
    raw.execute(
        "INSERT INTO embeddings (guild_id, name, name_key, architecture, file, vectors, added_by, added_at, source) "
        "VALUES (?, 'easyneg', 'easyneg', 'sd15', 'easyneg.safetensors', 8, 5, ?, 'civitai:1@2')",
        (GUILD, now),
    )
    raw.commit()
    with pytest.raises(sqlite3.IntegrityError):  # the old schema refuses a name it does not list
        raw.execute(
            "INSERT INTO models (guild_id, name, name_key, architecture, file, default_width, default_height, "
            "default_steps, default_cfg, default_sampler, added_by, added_at) "
            "VALUES (?, 'Z', 'z', 'zimage', 'z.safetensors', 1024, 1024, 8, 1, 'Euler', 5, ?)",
            (GUILD, now),
        )
    before = {table: raw.execute(sql).fetchall() for table, sql in _ALL_ROWS.items()}
    indexes, triggers = _schema_objects(raw, "index"), _schema_objects(raw, "trigger")
    raw.close()

    reg = await Registry.open(path)
    try:
        assert [x.name for x in await reg.loras.bookmarked_by(GUILD, 9)] == ["Old Timer"]
        assert [x.name for x in await reg.loras.search(GUILD, "sepia")] == ["Old Timer"]
    finally:
        await reg.close()

    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        for table, rows in before.items():
            # Later migrations (011) add columns at the end: the columns there before keep their values.
            after = raw.execute(_ALL_ROWS[table]).fetchall()
            assert [row[: len(rows[0])] for row in after] == rows, table
        assert _schema_objects(raw, "index") == indexes
        assert _schema_objects(raw, "trigger") == triggers
        assert {r[2] for r in raw.execute("PRAGMA foreign_key_list(bookmarks)")} == {"loras"}
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.execute("INSERT INTO lora_fts (lora_fts) VALUES ('integrity-check')")
        for table in ("models", "loras", "embeddings"):
            sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            assert "'sd15'" not in sql and "_rebuilt" not in sql, sql
        # A name the schema never listed is now the registry's to judge, not SQLite's.
        raw.execute(
            "INSERT INTO models (guild_id, name, name_key, architecture, file, default_width, default_height, "
            "default_steps, default_cfg, default_sampler, added_by, added_at) "
            "VALUES (?, 'Z', 'z', 'zimage', 'z.safetensors', 1024, 1024, 8, 1, 'Euler', 5, ?)",
            (GUILD, now),
        )
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute(
                "INSERT INTO loras (guild_id, name, name_key, architecture, category, default_weight, "
                "recommended_min, recommended_max, file, added_by, added_at) "
                "VALUES (?, 'E', 'e', '', 'style', 1, 0, 1, 'e.safetensors', 5, ?)",
                (GUILD, now),
            )
    finally:
        raw.close()


async def test_variants_migration_keeps_rows_and_stores_variants(tmp_path: Path) -> None:
    """011 adds the model's and LoRA's variant and the LoRA's Civitai baseModel: rows from
    version 10 keep every value and read back with None; new entries keep what they were given."""
    from dataclasses import replace

    from .conftest import model

    path = tmp_path / "v10.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=10) == 10
    raw = sqlite3.connect(path)
    _seed_rows(raw, 10)
    before = {table: raw.execute(sql).fetchall() for table, sql in _ALL_ROWS.items()}
    raw.close()
    reg = await Registry.open(path)
    try:
        old = await reg.loras.get(GUILD, "Old Timer")
        assert old is not None and (old.variant, old.base_model) == (None, None)
        flux = replace(model("Schnell", "flux"), variant="schnell", default_width=1024, default_height=1024)
        await reg.models.add(GUILD, flux, ADMIN)
        await reg.loras.add(GUILD, replace(lora("Fast", "flux"), variant="schnell", base_model="Flux.1 S"), ADMIN)
        assert (await reg.models.get(GUILD, "Schnell")).variant == "schnell"  # type: ignore[union-attr]
        fast = await reg.loras.get(GUILD, "Fast")
        assert fast is not None and (fast.variant, fast.base_model) == ("schnell", "Flux.1 S")
        with pytest.raises(RegistryError, match="Unknown variant 'turbo'"):
            await reg.models.update(GUILD, "Schnell", ADMIN, variant="turbo")
    finally:
        await reg.close()
    raw = sqlite3.connect(path)
    try:
        for table, rows in before.items():
            after = raw.execute(_ALL_ROWS[table]).fetchall()[: len(rows)]
            assert [row[: len(rows[0])] for row in after] == rows, table
        columns = {r[1] for r in raw.execute("PRAGMA table_info(loras)")}
        assert {"variant", "base_model"} <= columns
    finally:
        raw.close()
