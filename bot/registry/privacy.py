"""What the registry stores about one member or one server, and deleting it.

Two rights, one module: a member sees and deletes what is kept about them in a server
(``/privacy``), and a server's data goes once the bot has been removed from it for a grace
period (the bot may be re-invited by mistake or kicked by a raid; within the grace period
everything comes back as it was). Every statement filters on the guild id first, like the
rest of the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite

from bot.registry.db import Database

#: Tables holding a server's rows, all keyed by ``guild_id``. Bookmarks go with their LoRAs
#: (ON DELETE CASCADE) and are listed too, for the rows left by LoRAs already removed.
GUILD_TABLES = (
    # Children before the rows they reference (foreign keys are on).
    "jobs",
    "post_attachments",
    "recipe_book_loras",
    "recipe_cards",
    "recipe_book",
    "bookmarks",
    "saved_recipes",
    "posts",
    "audit_log",
    "loras",
    "models",
    "embeddings",
    "guild_settings",
)
#: A job the member has been told the outcome of.
_FINISHED = "state IN ('done', 'failed', 'cancelled') AND told = 1"
#: Rows kept for a departed server's last sync of commands to it directly (development).
_GUILD_SYNC_SCOPE = "guild:{}"


@dataclass(frozen=True)
class MemberData:
    """Counts and samples of what is stored about one member in one server."""

    saved_recipes: tuple[str, ...]
    #: (channel id, message id) of images posted for the member whose recipe is kept.
    posts: tuple[tuple[int, int], ...]
    bookmarks: int
    #: Admin changes the member made, kept in the server's audit log.
    audit_entries: int
    #: Recipes the member put in the server's recipe book.
    book_entries: tuple[str, ...] = ()
    #: Recipe cards the member shared, or that credit them as the recipe's author.
    cards: int = 0
    #: Finished jobs still in the job table (kept a day, for ETAs; see bot.jobs.store).
    finished_jobs: int = 0

    @property
    def empty(self) -> bool:
        return not (
            self.saved_recipes or self.posts or self.bookmarks or self.audit_entries
            or self.book_entries or self.cards or self.finished_jobs
        )


@dataclass(frozen=True)
class MemberDeletion:
    saved_recipes: int
    posts: tuple[tuple[int, int], ...]
    bookmarks: int
    audit_entries: int
    book_entries: int = 0
    cards: int = 0
    finished_jobs: int = 0


class PrivacyStore:
    """Seeing and deleting a member's data; deleting a departed server's data when due."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def member_data(self, guild_id: int, user_id: int) -> MemberData:
        recipes = await self._db.fetch_all(
            "SELECT name FROM saved_recipes WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC",
            (guild_id, user_id),
        )
        posts = await self._db.fetch_all(
            "SELECT channel_id, message_id FROM posts WHERE guild_id = ? AND user_id = ? "
            "ORDER BY created_at DESC",
            (guild_id, user_id),
        )
        bookmarks = await self._db.fetch_one(
            "SELECT count(*) FROM bookmarks WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        audit = await self._db.fetch_one(
            "SELECT count(*) FROM audit_log WHERE guild_id = ? AND actor_id = ?", (guild_id, user_id)
        )
        book = await self._db.fetch_all(
            "SELECT name FROM recipe_book WHERE guild_id = ? AND author_id = ? ORDER BY created_at DESC",
            (guild_id, user_id),
        )
        cards = await self._db.fetch_one(
            "SELECT count(*) FROM recipe_cards WHERE guild_id = ? AND (author_id = ? OR shared_by = ?)",
            (guild_id, user_id, user_id),
        )
        jobs = await self._db.fetch_one(
            f"SELECT count(*) FROM jobs WHERE guild_id = ? AND user_id = ? AND {_FINISHED}",  # noqa: S608
            (guild_id, user_id),
        )
        return MemberData(
            tuple(r[0] for r in recipes),
            tuple((int(r[0]), int(r[1])) for r in posts),
            int(bookmarks[0]) if bookmarks else 0,
            int(audit[0]) if audit else 0,
            tuple(r[0] for r in book),
            int(cards[0]) if cards else 0,
            int(jobs[0]) if jobs else 0,
        )

    async def delete_member_data(self, guild_id: int, user_id: int) -> MemberDeletion:
        """Delete a member's recipes (saved and in the recipe book), bookmarks, recipe cards and
        post records in one transaction.

        Audit entries of admin changes they made stay (the server's record of who changed
        its registry), with the member's id replaced by 0 ("a former member"). Returns the
        posts whose records were deleted, so the caller can also delete those messages.
        """

        async def work(conn: aiosqlite.Connection) -> MemberDeletion:
            cursor = await conn.execute(
                "SELECT channel_id, message_id FROM posts WHERE guild_id = ? AND user_id = ?",
                (guild_id, user_id),
            )
            posts = tuple((int(r[0]), int(r[1])) for r in await cursor.fetchall())
            counts = []
            for sql in (
                "DELETE FROM saved_recipes WHERE guild_id = ? AND user_id = ?",
                "DELETE FROM bookmarks WHERE guild_id = ? AND user_id = ?",
                "DELETE FROM posts WHERE guild_id = ? AND user_id = ?",  # attachments cascade
                "UPDATE audit_log SET actor_id = 0 WHERE guild_id = ? AND actor_id = ?",
                "DELETE FROM recipe_book WHERE guild_id = ? AND author_id = ?",  # its LoRA keys cascade
                "DELETE FROM recipe_cards WHERE guild_id = ?1 AND (author_id = ?2 OR shared_by = ?2)",
                # Waiting jobs stay (the member cancels them from /queue); finished ones go.
                f"DELETE FROM jobs WHERE guild_id = ? AND user_id = ? AND {_FINISHED}",  # noqa: S608
            ):
                counts.append((await conn.execute(sql, (guild_id, user_id))).rowcount)
            return MemberDeletion(counts[0], posts, counts[1], counts[3], counts[4], counts[5], counts[6])

        return await self._db.transaction(work)

    # --- servers the bot left -------------------------------------------------------------

    async def record_departure(self, guild_id: int, at: float | None = None) -> None:
        """The bot was removed from ``guild_id``; its data is due ``grace`` seconds later.

        A departure already recorded keeps its first time: a restart must not extend it.
        """
        await self._db.execute(
            "INSERT OR IGNORE INTO guild_departures (guild_id, left_at) VALUES (?, ?)",
            (guild_id, time.time() if at is None else at),
        )

    async def cancel_departure(self, guild_id: int) -> bool:
        """The bot is back in the server within the grace period: nothing is deleted."""
        return await self._db.execute("DELETE FROM guild_departures WHERE guild_id = ?", (guild_id,)) == 1

    async def departures(self) -> dict[int, float]:
        rows = await self._db.fetch_all("SELECT guild_id, left_at FROM guild_departures")
        return {int(r[0]): float(r[1]) for r in rows}

    async def known_guilds(self) -> set[int]:
        """Every server with any row in the registry (to notice removals made while offline)."""
        union = " UNION ".join(f"SELECT guild_id FROM {t}" for t in GUILD_TABLES)  # noqa: S608 - fixed names
        return {int(r[0]) for r in await self._db.fetch_all(union)}

    async def purge_due(self, grace_s: float, now: float | None = None) -> list[int]:
        """Delete every server whose departure is older than ``grace_s``; returns their ids."""
        now = time.time() if now is None else now
        rows = await self._db.fetch_all(
            "SELECT guild_id FROM guild_departures WHERE left_at <= ?", (now - grace_s,)
        )
        purged = []
        for row in rows:
            await self.purge_guild(int(row[0]))
            purged.append(int(row[0]))
        return purged

    async def purge_guild(self, guild_id: int) -> None:
        """Every row of one server, in one transaction (the FTS index follows by trigger)."""

        async def work(conn: aiosqlite.Connection) -> None:
            for table in GUILD_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))  # noqa: S608
            await conn.execute(
                "DELETE FROM command_sync WHERE scope = ?", (_GUILD_SYNC_SCOPE.format(guild_id),)
            )
            await conn.execute("DELETE FROM guild_departures WHERE guild_id = ?", (guild_id,))

        await self._db.transaction(work)


class SyncState:
    """The hash of the command tree as last synced, per scope and application."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def last_hash(self, scope: str, application_id: int) -> str | None:
        row = await self._db.fetch_one(
            "SELECT tree_hash FROM command_sync WHERE scope = ? AND application_id = ?",
            (scope, application_id),
        )
        return str(row[0]) if row else None

    async def record(self, scope: str, application_id: int, tree_hash: str) -> None:
        await self._db.execute(
            "INSERT INTO command_sync (scope, application_id, tree_hash, synced_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, application_id) DO UPDATE SET tree_hash = excluded.tree_hash, "
            "synced_at = excluded.synced_at",
            (scope, application_id, tree_hash, time.time()),
        )


def guild_scope(guild_id: int) -> str:
    return _GUILD_SYNC_SCOPE.format(guild_id)
