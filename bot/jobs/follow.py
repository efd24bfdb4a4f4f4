"""Following one job on its engine, from its submit to its images, and what a lost engine means.

A job handed to an engine is followed on the engine's event stream: its start and progress
go to the member's status reply; its images are fetched when it is done and handed back to
the dispatcher to post. Two things can go wrong on the way, and this module decides what
they mean for the job:

- **The engine goes away** (the stream breaks, the engine says it lost the job): the job
  goes back to the front of the queue and runs once more; a second loss fails it.
- **The job stalls** (the engine answers but the job never advances for ``stall_limit``):
  it is cancelled; an engine the bot owns is restarted and the job runs once more, and on
  an engine the bot does not own the job fails, since the same engine would stall again.

The outcome itself (finishing, posting, telling the member) stays with the dispatcher: the
follower calls back into it through :class:`FollowHost`, so this module never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import aiohttp

from bot.jobs.engines import EnginePool, EngineSlot
from bot.jobs.model import Job, JobState
from bot.jobs.scheduler import FairScheduler
from bot.jobs.speed import SpeedBook
from bot.jobs.status import StatusBoard, describe_duration
from bot.jobs.store import JobStore
from engine.protocol import EngineError, ErrorCode

log = logging.getLogger(__name__)

#: Longest a job may go without an event (heartbeats do not count) before it is given up.
#: Generous on purpose: the first use of a large model can spend minutes loading before its
#: first step, and one step of a big image on a small GPU can take a minute.
DEFAULT_STALL_LIMIT_S = 15 * 60.0
#: Engine losses a job survives: it runs once more after the first, then fails.
MAX_LOSSES = 1
#: What members read when an engine went away (the engine's own words name its address).
ENGINE_LOST = (
    "The image engine stopped while making this image, twice, so it was not retried again; "
    "it may be too large for the GPU. Try a smaller size or fewer images, and tell an admin "
    "if it keeps happening."
)


class JobStalled(Exception):
    """The engine answers but sent nothing about this job for ``stall_limit`` seconds.

    Deliberately not a TimeoutError or OSError: those mean the engine is gone.
    """


class EngineLost(Exception):
    """The engine went away while it held the job (the detail is for the log)."""


class FollowHost(Protocol):
    """The dispatcher's state and steps a follower uses (bot.jobs.dispatcher.Dispatcher),
    named here so that this module does not import the dispatcher that imports it."""

    pool: EnginePool
    store: JobStore | None
    scheduler: FairScheduler
    board: StatusBoard
    speed: SpeedBook
    retry_wait: float

    def _spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any]: ...
    def _wake_up(self) -> None: ...
    async def _leave_engine(self, job: Job, slot: EngineSlot) -> None: ...
    async def _requeue_withdrawn(self, job: Job) -> None: ...
    async def _finish(self, job: Job, state: JobState) -> None: ...
    async def _post(self, job: Job, images: list[bytes], seconds: float | None) -> None: ...
    async def _fail_job(self, job: Job, code: str, message: str) -> None: ...
    async def _fail_text(self, job: Job, text: str) -> None: ...


class JobFollower:
    """Follows jobs on their engines for one dispatcher; holds the stall limit."""

    def __init__(self, host: FollowHost, *, stall_limit: float = DEFAULT_STALL_LIMIT_S) -> None:
        self.d = host
        self.stall_limit = stall_limit

    async def follow(self, job: Job, slot: EngineSlot) -> None:
        """Follow one job on its engine to its images; then post them in a task of their own."""
        d = self.d
        try:
            count, seconds = await self.watch(job, slot)
            images = [await slot.client.image(job.engine_job_id, n) for n in range(count)]
        except JobStalled as exc:
            await d._leave_engine(job, slot)
            await self.stalled(job, slot, str(exc))
            return
        except EngineError as exc:
            await d._leave_engine(job, slot)
            if job.withdrawn and not job.cancel_requested:
                await d._requeue_withdrawn(job)
            elif exc.code == ErrorCode.CANCELLED or job.cancel_requested:
                await d._finish(job, JobState.CANCELLED)
            elif exc.code in (ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.UNKNOWN_JOB):
                await self.engine_lost(job, slot, exc.message)
            else:
                await d._fail_job(job, exc.code, exc.message)
            return
        except (EngineLost, TimeoutError, OSError, aiohttp.ClientError) as exc:
            await d._leave_engine(job, slot)
            if job.cancel_requested:
                await d._finish(job, JobState.CANCELLED)
            else:
                await self.engine_lost(job, slot, f"{type(exc).__name__}: {exc}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("following job %s failed", job.id)
            await d._leave_engine(job, slot)
            await d._fail_text(job, f"Something went wrong on the bot's side ({type(exc).__name__}).")
            return
        await d._leave_engine(job, slot)
        if seconds:
            d.speed.record(job.recipe, seconds)
        await d._post(job, images, seconds)

    async def watch(self, job: Job, slot: EngineSlot) -> tuple[int, float | None]:
        """The job's events until ``done``; the images' count and the engine's seconds."""
        d = self.d
        loop = asyncio.get_running_loop()
        stream = slot.client.events(job.engine_job_id)
        # The stall clock also covers the wait in the engine's own queue: the bot gives each
        # engine only what it is about to run, so a long silence there means the job ahead is stuck.
        deadline = loop.time() + self.stall_limit
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        event = await anext(stream)
                except StopAsyncIteration:
                    raise EngineLost("the engine closed the event stream before the job finished") from None
                except TimeoutError:
                    if not scope.expired():
                        raise  # the engine client's own read timeout: the engine is gone
                    raise JobStalled(
                        f"The image engine still answers but made no progress on this job for "
                        f"{describe_duration(self.stall_limit)}, so the job was stopped."
                    ) from None
                deadline = loop.time() + self.stall_limit
                kind = event.get("type")
                if kind == "started":
                    if job.state != JobState.RUNNING:
                        job.state, job.started_at = JobState.RUNNING, time.time()
                        if d.store is not None:
                            await d.store.save(job)
                    d.board.mark(job)
                elif kind == "progress":
                    job.state = JobState.RUNNING
                    job.step, job.total = int(event.get("step", 0)), int(event.get("total", 0))
                    d.board.mark(job)
                elif kind == "done":
                    return int(event.get("images", job.recipe.count)), event.get("seconds")
                elif kind == "failed":
                    error = event.get("error") or {}
                    raise EngineError(error.get("code", ErrorCode.INTERNAL), error.get("message", "failed"))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def stalled(self, job: Job, slot: EngineSlot, text: str) -> None:
        d = self.d
        with contextlib.suppress(Exception):
            await asyncio.wait_for(slot.client.cancel(job.engine_job_id), timeout=10)
        if job.cancel_requested:
            await d._finish(job, JobState.CANCELLED)
            return
        if slot.process is not None:
            log.error("job %s stalled on %s (%s); restarting that engine", job.id, slot.name, slot.key)
            d.pool.mark_down(slot, "a job stalled; restarting it")
            d._spawn(slot.process.restart("a job made no progress"), f"jobs-restart-{slot.name}")
            await self.engine_lost(job, slot, "stalled", counts=True)
            return
        log.error("job %s stalled on %s (%s), an engine this bot does not own", job.id, slot.name, slot.key)
        await d._fail_text(job, text + " The engine may be stuck: an admin should check its log and "
                           "restart it if this happens again.")

    async def engine_lost(self, job: Job, slot: EngineSlot, detail: str, *, counts: bool = True) -> None:
        """The engine went away with ``job``: queue it again (first), or fail it."""
        d = self.d
        log.warning("job %s lost on %s (%s): %s", job.id, slot.name, slot.key, detail)
        if counts:
            d.pool.mark_down(slot, detail)
            job.losses += 1
        if job.cancel_requested:
            await d._finish(job, JobState.CANCELLED)
            return
        if job.losses > MAX_LOSSES:
            await d._fail_text(job, ENGINE_LOST)
            return
        job.state, job.engine = JobState.QUEUED, None
        job.step = job.total = 0
        job.waiting_for = "retrying" if counts else None
        job.retry_deadline = time.monotonic() + d.retry_wait
        if d.store is not None:
            await d.store.save(job)
        d.scheduler.add(job, front=True)
        d.board.mark(job)
        d._wake_up()

