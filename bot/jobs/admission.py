"""Admission: which new jobs the queue takes, under the member's, the server's and the bot's caps.

The open jobs are counted here, per member and per server. A new job is checked against
every cap and counted in one synchronous step (:meth:`Admission.admit`, no await between
the check and the count), so requests that arrive together each see the ones before them
and none can pass a full cap (tests/bot/test_admission_races.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.jobs.model import Job


class QueueFull(Exception):
    """The member, the server or the whole bot has too many jobs waiting; says what to do."""


@dataclass(frozen=True)
class Limits:
    """How much the queue holds (the operator's settings; servers have their own below these)."""

    max_pending: int = 2000
    #: Largest share of ``max_pending`` one server may hold, so a busy server cannot lock out others.
    server_share: float = 0.5


class Admission:
    """The open jobs (every job not yet finished and told, by id), counted, and the caps."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.jobs: dict[str, Job] = {}
        self._by_member: dict[tuple[int, int], int] = {}
        self._by_guild: dict[int, int] = {}

    def admit(self, job: Job, *, user_limit: int, server_limit: int) -> None:
        """Count ``job`` as open, or raise :class:`QueueFull` saying which cap it meets.

        ``user_limit`` and ``server_limit`` are the server's settings (0: no limit of its
        own); the bot's :class:`Limits` apply below them. Synchronous on purpose: the check
        and the count must not be split by an await.
        """
        member = (job.guild_id, job.user_id)
        mine = self._by_member.get(member, 0)
        if user_limit > 0 and mine >= user_limit:
            raise QueueFull(
                f"You already have {mine} image job(s) waiting, the most this server allows "
                f"({user_limit}). Wait for one to finish, or cancel one with its Cancel button "
                "(or all of them from `/queue`)."
            )
        share = max(1, int(self.limits.max_pending * self.limits.server_share))
        cap = min(server_limit, share) if server_limit > 0 else share
        here = self._by_guild.get(job.guild_id, 0)
        if here >= cap:
            raise QueueFull(
                f"This server already has {here} image jobs waiting, the most it may have at "
                "once. Try again in a few minutes."
            )
        if len(self.jobs) >= self.limits.max_pending:
            raise QueueFull(f"The queue is full ({self.limits.max_pending} jobs). Try again in a few minutes.")
        self.track(job)

    def track(self, job: Job) -> None:
        """Count ``job`` as open without checking the caps (a job taken up after a restart)."""
        self.jobs[job.id] = job
        member = (job.guild_id, job.user_id)
        self._by_member[member] = self._by_member.get(member, 0) + 1
        self._by_guild[job.guild_id] = self._by_guild.get(job.guild_id, 0) + 1

    def release(self, job: Job) -> None:
        """``job`` is no longer open (finished and told, or never written); its place is free."""
        if self.jobs.pop(job.id, None) is None:
            return
        member = (job.guild_id, job.user_id)
        for counts, key in ((self._by_member, member), (self._by_guild, job.guild_id)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
