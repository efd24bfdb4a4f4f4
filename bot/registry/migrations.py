"""Versioned, forward-only schema migrations from ``data/schema/NNN_name.sql``.

The applied version lives in SQLite's ``user_version``. Each file runs in one transaction
together with the version bump, so a crash leaves the file at the previous version, never
half-migrated. Files are never edited once released: a change is a new, higher-numbered file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.registry.models import RegistryError
from engine.shipped_data import data_path

SCHEMA_DIR = data_path("schema")
_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Path = SCHEMA_DIR) -> list[Migration]:
    """All migrations in order; the numbers must run 1, 2, 3… without gaps."""
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise RuntimeError(f"{path} is not named NNN_description.sql; rename it.")
        found.append(Migration(int(match[1]), path.stem, path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(
                f"Migration numbers must be consecutive: expected {expected:03d}, "
                f"found {migration.name}."
            )
    return found


LATEST_VERSION = len(load_migrations())


async def current_version(conn: aiosqlite.Connection) -> int:
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    return int(row[0]) if row else 0


async def migrate(
    conn: aiosqlite.Connection, *, target: int | None = None, folder: Path = SCHEMA_DIR
) -> int:
    """Bring the database up to ``target`` (default: the latest); returns the new version."""
    migrations = load_migrations(folder)
    target = len(migrations) if target is None else target
    version = await current_version(conn)
    if version > len(migrations):
        raise RegistryError(
            f"This database is at schema version {version}, newer than this Atelier knows "
            f"({len(migrations)}). Upgrade Atelier, or restore a backup made for this version."
        )
    for migration in migrations[version:target]:
        # executescript commits anything pending first; the script carries its own transaction.
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n;\n"
            f"PRAGMA user_version = {migration.version};\n"
            "COMMIT;"
        )
        try:
            await conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
    return await current_version(conn)
