"""SQLite connections: one writer, one reader, WAL, and writes that never surface "locked".

SQLite allows one writer at a time. Inside this process every write goes through a single
connection behind an asyncio lock, so writers queue instead of colliding; ``busy_timeout``
and a retry with backoff cover other processes holding the file (a second bot, a backup).
Reads use their own connection and, thanks to WAL, never wait for a writer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000
#: Attempts for one write transaction when another process keeps the file locked.
WRITE_ATTEMPTS = 8


def is_busy(error: BaseException) -> bool:
    """True for SQLite's "database is locked" / "busy" errors, which are worth retrying."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    text = str(error).lower()
    return "locked" in text or "busy" in text


async def _configure(conn: aiosqlite.Connection) -> None:
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA synchronous = NORMAL")


class Database:
    """The registry's SQLite file. Use :meth:`open`; close with :meth:`close`."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so transactions are exactly the BEGINs we issue.
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await _configure(writer)
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                log.warning("SQLite refused WAL mode for %s (got %s)", path, mode)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await _configure(reader)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        """The writer connection, for migrations run before anything else uses the file."""
        return self._writer

    # --- reads ----------------------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._reader.execute(sql, params) as cursor:
            return await cursor.fetchone()

    # --- writes ---------------------------------------------------------------------------

    async def transaction(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``work`` inside ``BEGIN IMMEDIATE … COMMIT`` on the writer, retrying when busy.

        ``work`` may run more than once, so it must only touch the database. A caller that is
        cancelled (a task stopped at shutdown) does not cut the transaction short: it runs to
        its COMMIT or ROLLBACK in a shielded task, because aiosqlite cannot take back a
        statement already sent to its thread, and a half-done one would leave the shared
        writer inside a transaction for everyone after.
        """
        return await asyncio.shield(self._transaction(work))

    async def _transaction(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        delay = 0.02
        async with self._write_lock:
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    await self._writer.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as error:
                    if not is_busy(error) or attempt == WRITE_ATTEMPTS:
                        raise
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                try:
                    result = await work(self._writer)
                    await self._writer.execute("COMMIT")
                    return result
                except BaseException as error:
                    await self._rollback()
                    if not is_busy(error) or attempt == WRITE_ATTEMPTS:
                        raise
                    log.info("SQLite busy, retrying write (attempt %d)", attempt)
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _rollback(self) -> None:
        # SQLite already rolls back by itself after some errors; then there is nothing to undo.
        if self._writer.in_transaction:
            await self._writer.execute("ROLLBACK")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement in its own transaction; returns the affected row count."""

        async def work(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

        return await self.transaction(work)

    async def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.executemany(sql, rows)

        await self.transaction(work)
