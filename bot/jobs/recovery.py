"""Taking up, after a restart, the jobs a previous process left in the job table.

Queued jobs are queued again. For submitted and running ones the engine that held them is
asked, by the job's idempotent engine id, what became of the run: a finished one is collected
and posted (a post that may already have reached Discord goes out with the same nonce, which
Discord answers with the first message, or is found in the channel), a running one is followed,
a lost one runs again; so nothing runs twice and nothing is posted twice. Members whose private
reply can no longer be edited are named in one message per channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import aiohttp
import discord

from bot.jobs.admission import Admission
from bot.jobs.engines import EnginePool
from bot.jobs.follow import JobFollower
from bot.jobs.model import Job, JobState
from bot.jobs.poster import Poster
from bot.jobs.scheduler import FairScheduler
from bot.jobs.status import StatusBoard
from bot.jobs.store import JobStore
from engine.protocol import EngineError, ErrorCode

log = logging.getLogger(__name__)


class DispatcherState(Protocol):
    """The dispatcher's state and steps that recovery uses (bot.jobs.dispatcher.Dispatcher),
    named here so that recovery does not import the dispatcher that imports it."""

    pool: EnginePool
    poster: Poster
    store: JobStore | None
    admission: Admission
    retry_wait: float
    scheduler: FairScheduler
    board: StatusBoard
    follower: JobFollower

    def _spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any]: ...
    def _wake_up(self) -> None: ...
    async def _tell(self, job: Job) -> None: ...
    async def _finish(self, job: Job, state: JobState) -> None: ...
    async def _post(self, job: Job, images: list[bytes], seconds: float | None) -> None: ...
    async def _posted(self, job: Job, message: discord.Message) -> None: ...
    async def _fail_job(self, job: Job, code: str, message: str) -> None: ...


class Recovery:
    """Works on the dispatcher's own state (the same package): one concept, kept apart."""

    def __init__(self, dispatcher: DispatcherState) -> None:
        self.d = dispatcher

    async def take_up(self, jobs: Sequence[Job]) -> None:
        """Take up the jobs a previous process left (see the module docstring)."""
        d = self.d
        log.info("taking up %d job(s) from before the restart", len(jobs))
        expired: dict[tuple[int, int], list[Job]] = {}
        for job in jobs:
            if job.status_message_id is None:
                job.reply_lost = True  # the process died before the private reply was sent
            if job.state.final:
                if not job.told:
                    d._spawn(d._tell(job), f"jobs-tell-{job.id}")
                continue
            d.admission.track(job)
            if job.cancel_requested and job.state == JobState.QUEUED:
                await d._finish(job, JobState.CANCELLED)
                continue
            if job.state == JobState.QUEUED:
                d.scheduler.add(job)
            else:
                d._spawn(self.resume(job), f"jobs-resume-{job.id}")
            if job.token_usable() and job.status_message_id is not None:
                d.board.mark(job)
            elif job.state in (JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING):
                expired.setdefault((job.guild_id, job.channel_id), []).append(job)
        d._wake_up()
        for (guild_id, channel_id), waiting in expired.items():
            await d.poster.notify_restart(channel_id, guild_id, waiting)

    async def resume(self, job: Job) -> None:
        """Ask the engine that held ``job`` what became of it, and carry on from there."""
        d = self.d
        slot = d.pool.slot(job.engine)
        if slot is None:
            await self.requeue(job)
            return
        deadline = time.monotonic() + d.retry_wait
        while True:
            try:
                status = await asyncio.wait_for(slot.client.status(job.engine_job_id), 10)
                break
            except EngineError as exc:
                if exc.code == ErrorCode.UNKNOWN_JOB:
                    await self.requeue(job)
                    return
                if exc.code != ErrorCode.ENGINE_UNAVAILABLE or time.monotonic() > deadline:
                    await self.requeue(job)
                    return
            except (TimeoutError, OSError, aiohttp.ClientError):
                if time.monotonic() > deadline:
                    await self.requeue(job)
                    return
            await asyncio.sleep(1.0)
        if job.state == JobState.POSTING:
            earlier = await d.poster.find_posted(job)
            if earlier is not None:
                await d._posted(job, earlier)
                return
        if status.state == "done" or job.state == JobState.POSTING:
            try:
                images = [await slot.client.image(job.engine_job_id, n) for n in range(status.images)]
            except (EngineError, OSError, aiohttp.ClientError, TimeoutError):
                await self.requeue(job)  # the images are gone: make them again
                return
            if not images:
                await self.requeue(job)
                return
            await d._post(job, images, status.seconds or job.seconds)
            return
        if status.state in ("queued", "running"):
            slot.hand_over([job])
            d.scheduler.on_engine(job)
            await d.follower.follow(job, slot)
            return
        if status.state == "cancelled" or job.cancel_requested:
            await d._finish(job, JobState.CANCELLED)
            return
        error = status.error or {}
        code = error.get("code", ErrorCode.INTERNAL)
        if code == ErrorCode.CANCELLED:  # stopped with its engine (a graceful stop of both)
            await self.requeue(job)
            return
        await d._fail_job(job, code, error.get("message", "the image could not be made"))

    async def requeue(self, job: Job) -> None:
        """The engine no longer knows the run: it runs again (same seed: the same image)."""
        d = self.d
        if job.cancel_requested:
            await d._finish(job, JobState.CANCELLED)
            return
        job.state, job.engine, job.posting_at = JobState.QUEUED, None, None
        if d.store is not None:
            await d.store.save(job)
        d.scheduler.add(job, front=True)
        d.board.mark(job)
        d._wake_up()
