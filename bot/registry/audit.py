"""The audit log: every admin change, written in the same transaction as the change itself.

The stores call :func:`record` with their open transaction's connection, so a change and its
audit row are committed or rolled back together; :class:`AuditLog` reads the log back for
``/audit``. Values are cut to :data:`AUDIT_VALUE_LIMIT` characters so a long description
cannot bloat the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

from bot.registry.db import Database
from bot.registry.models import AuditEntry

AUDIT_VALUE_LIMIT = 200


def audit_value(value: Any) -> Any:
    """A value as the audit log keeps it: JSON-friendly, long strings cut."""
    if isinstance(value, (frozenset, set, tuple)):
        value = sorted(value) if isinstance(value, (frozenset, set)) else list(value)
    if isinstance(value, str) and len(value) > AUDIT_VALUE_LIMIT:
        return value[:AUDIT_VALUE_LIMIT] + "…"
    if isinstance(value, Mapping):
        return {str(k): audit_value(v) for k, v in value.items()}
    return value


def diff(before: object, after: object, names: Iterable[str]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for the named fields an edit changed."""
    return {
        name: [audit_value(getattr(before, name)), audit_value(getattr(after, name))]
        for name in sorted(names)
        if getattr(before, name) != getattr(after, name)
    }


def added(file: str, architecture: str, source: str | None) -> dict[str, Any]:
    """What the audit log says of a new entry: its file, and where it came from when known."""
    details: dict[str, Any] = {"file": file, "architecture": architecture}
    if source:
        details["source"] = source
    return details


async def record(
    conn: aiosqlite.Connection,
    guild_id: int,
    actor_id: int,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Write one audit row on ``conn``, inside the caller's transaction."""
    await conn.execute(
        "INSERT INTO audit_log (guild_id, actor_id, action, target, details, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            guild_id,
            actor_id,
            action,
            target,
            json.dumps(audit_value(dict(details or {})), ensure_ascii=False),
            time.time(),
        ),
    )


class AuditLog:
    """Reads a server's audit log (``Registry.audit``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def entries(
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
