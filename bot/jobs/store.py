"""The job table (``data/schema/004_jobs.sql``) through aiosqlite: the queue's source of truth.

Every state change is written before anyone is told about it, so a process killed at any
moment leaves rows that say what was promised: a job is written before the member hears it is
queued, marked ``submitted`` before the engine sees it, ``posting`` before the upload starts.
The store shares the registry's :class:`~bot.registry.db.Database` (one writer per file).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from bot.jobs.model import Job, JobState
from bot.registry.db import Database
from engine.protocol import Recipe

#: Finished jobs are kept this long (for speed estimates after a restart), then deleted: they
#: hold prompts and names, so no longer than that (``/privacy`` lists and deletes them too).
KEEP_FINISHED_S = 24 * 3600

_COLUMNS = (
    "id", "guild_id", "channel_id", "user_id", "user_name", "origin", "state", "weight", "recipe",
    "parent_message_id", "parent_channel_id", "parent_credit",
    "notes", "file_limit", "attempts", "losses", "engine", "cancel_requested", "application_id",
    "interaction_token", "token_expires_at", "status_message_id", "result_message_ids", "error",
    "seconds", "told", "created_at", "submitted_at", "started_at", "posting_at", "finished_at",
    "updated_at",
)  # fmt: skip
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"  # noqa: S608
)
_UPDATE = (
    f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE id = ?"  # noqa: S608
)


def _values(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.guild_id, job.channel_id, job.user_id, job.user_name, job.origin,
        job.state.value, job.weight, json.dumps(job.recipe.to_json(), ensure_ascii=False),
        job.parent_message_id, job.parent_channel_id,
        json.dumps(list(job.parent_credit), ensure_ascii=False) if job.parent_credit else None,
        json.dumps(list(job.notes), ensure_ascii=False), job.file_limit, job.attempts, job.losses,
        job.engine, int(job.cancel_requested), job.application_id, job.interaction_token,
        job.token_expires_at, job.status_message_id, json.dumps(list(job.result_message_ids)),
        job.error, job.seconds, int(job.told), job.created_at, job.submitted_at, job.started_at,
        job.posting_at, job.finished_at, job.updated_at,
    )  # fmt: skip


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        recipe=Recipe.from_json(json.loads(row["recipe"])),
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        origin=row["origin"],
        notes=tuple(json.loads(row["notes"])),
        file_limit=row["file_limit"],
        weight=row["weight"],
        parent_message_id=row["parent_message_id"],
        parent_channel_id=row["parent_channel_id"],
        parent_credit=tuple(json.loads(row["parent_credit"])) if row["parent_credit"] else None,  # type: ignore[arg-type]
        state=JobState(row["state"]),
        attempts=row["attempts"],
        losses=row["losses"],
        engine=row["engine"],
        cancel_requested=bool(row["cancel_requested"]),
        application_id=row["application_id"],
        interaction_token=row["interaction_token"],
        token_expires_at=row["token_expires_at"],
        status_message_id=row["status_message_id"],
        result_message_ids=tuple(json.loads(row["result_message_ids"])),
        error=row["error"],
        seconds=row["seconds"],
        told=bool(row["told"]),
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        posting_at=row["posting_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
    )


class JobStore:
    """Reads and writes job rows; callers own the in-memory :class:`Job` objects."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, job: Job) -> None:
        job.updated_at = time.time()
        await self._db.execute(_INSERT, _values(job))

    async def save(self, job: Job) -> None:
        """Write the whole row: a job has one writer (the dispatcher), so no field is lost."""
        job.updated_at = time.time()
        values = _values(job)
        await self._db.execute(_UPDATE, (*values[1:], job.id))

    async def save_many(self, jobs: Sequence[Job]) -> None:
        now = time.time()
        rows = []
        for job in jobs:
            job.updated_at = now
            values = _values(job)
            rows.append((*values[1:], job.id))
        if rows:
            await self._db.execute_many(_UPDATE, rows)

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def open_jobs(self) -> list[Job]:
        """Jobs a restart must take up: unfinished ones, and finished ones nobody was told of."""
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE state NOT IN ('done', 'failed', 'cancelled') OR told = 0 "
            "ORDER BY created_at, id"
        )
        return [_job(row) for row in rows]

    async def recent_speeds(self, limit: int = 500) -> list[Job]:
        """Recently finished jobs with their generation time, newest first (for ETAs)."""
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE state = 'done' AND seconds IS NOT NULL "
            "ORDER BY finished_at DESC LIMIT ?",
            (int(limit),),
        )
        return [_job(row) for row in rows]

    async def history(self, guild_id: int, user_id: int, limit: int = 5) -> list[Job]:
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? AND state IN "
            "('done', 'failed', 'cancelled') ORDER BY finished_at DESC LIMIT ?",
            (guild_id, user_id, int(limit)),
        )
        return [_job(row) for row in rows]

    async def prune(self, older_than_s: float = KEEP_FINISHED_S) -> int:
        """Delete finished, told jobs older than ``older_than_s``; returns how many."""
        return await self._db.execute(
            "DELETE FROM jobs WHERE told = 1 AND finished_at IS NOT NULL AND finished_at < ?",
            (time.time() - older_than_s,),
        )
