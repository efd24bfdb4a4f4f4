"""From an accepted request to a posted image, whatever crashes in between.

The dispatcher owns the job path. It writes each job to the job table before the member is
told it is queued, asks the :class:`~bot.jobs.scheduler.FairScheduler` what each free engine
should get, has every job followed on its engine (:class:`~bot.jobs.follow.JobFollower`), and
hands finished images to the :class:`~bot.jobs.poster.Poster` in their own tasks, so the engines
never wait on Discord.

What can go wrong, and what happens:

- **An engine dies** (SIGKILL, crash, host out of memory): its jobs' event streams break at
  once; each job goes back to the front of the queue and runs once more on the next engine
  that is up; a second loss fails it with a message that says so. An engine the bot owns is
  restarted by :class:`~bot.engine_link.process.EngineProcess`, with backoff, for as long as the
  bot runs. A job lost this way fails if no engine takes it within ``retry_wait``.
- **A job stalls** (the engine answers, the job never advances for ``stall_limit``): it is
  cancelled; an engine the bot owns is restarted and the job runs once more; on an engine
  the bot does not own the job fails with its request, since the same engine would stall again.
- **The bot dies** (SIGKILL, power): on the next start every unfinished job is taken up.
  Queued ones are queued again; for submitted and running ones the engine is asked, by the
  job's idempotent engine id, whether it finished: finished results are collected and
  posted, running ones followed, lost ones run again. A result whose post may already have
  reached Discord is posted with the same nonce, which Discord answers with the first post.
  Members are told: their private reply says so while its token lives, and one message per
  channel names the others (:mod:`bot.jobs.recovery`).
- **Discord fails** (5xx, 429, resets): posts and edits are retried for a bounded time
  (:mod:`bot.jobs.poster`); an image is kept until Discord takes it or the time runs out.

Operator details (engine addresses, commands) go to the log, never to a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import discord

from bot.jobs.admission import Admission, Limits, QueueFull
from bot.jobs.engines import EnginePool, EngineSlot
from bot.jobs.follow import DEFAULT_STALL_LIMIT_S, JobFollower
from bot.jobs.model import Job, JobState
from bot.jobs.poster import Poster, PostRefused
from bot.jobs.recovery import Recovery
from bot.jobs.scheduler import FairScheduler
from bot.jobs.speed import SpeedBook
from bot.jobs.status import FAREWELL_S, StatusBoard, describe_duration, status_text, stop_text
from bot.jobs.store import JobStore
from bot.recipes.text import imagine_command, public_error
from bot.ui import embeds
from engine.protocol import EngineError, ErrorCode

log = logging.getLogger(__name__)

#: Finished jobs kept in memory for buttons clicked before their post is recorded.
RECENT_POSTS = 256
#: How often old finished jobs are deleted from the job table.
PRUNE_EVERY_S = 3600.0

ADVICE: dict[str, str] = {
    ErrorCode.ARCH_MISMATCH: "Pick LoRAs made for the same architecture as the model.",
    ErrorCode.LORA_NO_MATCH: "This LoRA file does not fit the model; an admin should check its architecture.",
    ErrorCode.UNKNOWN_FILE: "The file is missing from the engine's folder; ask an admin to check the registry.",
    ErrorCode.CORRUPT_FILE: "The file is damaged; ask an admin to replace or remove it.",
    ErrorCode.UNSUPPORTED_FORMAT: "The engine cannot apply this LoRA's format; ask an admin to remove it or convert it.",
    ErrorCode.OUT_OF_MEMORY: "Try a smaller size, fewer images or fewer LoRAs.",
}
ENGINE_GONE = (
    "The image engine stopped while making this image and did not come back within {wait}. "
    "Try again later, and tell an admin if it keeps happening."
)

ResultHook = Callable[[Job, discord.Message, float], Awaitable[None]]


def describe_error(code: str, message: str) -> str:
    advice = ADVICE.get(code, "")
    return f"{message} {advice}".strip()


def _with_request(job: Job, text: str) -> str:
    request = embeds.truncate(imagine_command(job.recipe), 1500)
    return f"{text}\nYour request, to run it again:\n`{request}`"


class Dispatcher:
    """Holds the queue, feeds the engines, posts every outcome."""

    def __init__(
        self,
        client: discord.Client,
        pool: EnginePool,
        poster: Poster,
        *,
        store: JobStore | None = None,
        limits: Limits | None = None,
        status_interval: float = 2.0,
        retry_wait: float = 300.0,
        stall_limit: float = DEFAULT_STALL_LIMIT_S,
        max_batch: int = 4,
        affinity_window: int = 8,
        on_result: ResultHook | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.poster = poster
        self.store = store
        #: The open jobs, counted, and the caps a new one must pass.
        self.admission = Admission(limits if limits is not None else Limits())
        self.status_interval = status_interval
        self.retry_wait = retry_wait
        self.on_result = on_result
        self.speed = SpeedBook()
        #: Where image-to-image inputs are kept (bot.pictures.PictureStore); the bot sets it.
        self.inputs: Any = None
        self.scheduler = FairScheduler(cost=self._cost, max_batch=max_batch, affinity_window=affinity_window)
        self.board = StatusBoard(poster, self._render, interval=status_interval)
        #: Follows each job on its engine: progress, stalls, engines that go away.
        self.follower = JobFollower(self, stall_limit=stall_limit)
        pool.on_change = self._wake_up
        self._recent_posts: dict[int, Job] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Tasks posting a job's image or telling its member the outcome (see close).
        self._ending: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._order: list[Job] = []
        self._order_version = -1
        self._order_at = 0.0
        self._closed = False
        self._started = False

    @property
    def stall_limit(self) -> float:
        """Seconds a job may go without progress on its engine (kept by :attr:`follower`)."""
        return self.follower.stall_limit

    @property
    def jobs(self) -> dict[str, Job]:
        """Every job not yet finished and told, by id (kept by :attr:`admission`)."""
        return self.admission.jobs

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take up the job table, start the engines' health loop and the dispatch loops."""
        if self._started:
            return
        self._started = True
        if self.store is not None:
            try:
                await self.store.prune()
            except Exception:
                # Not fatal (the status loop tries again every PRUNE_EVERY_S), but a table
                # that never shrinks keeps prompts longer than promised: the operator must know.
                log.exception("deleting old finished jobs from the job table failed; trying again later")
            for job in await self.store.recent_speeds():
                if job.seconds:
                    self.speed.record(job.recipe, job.seconds)
        await self.pool.start()
        recovered = await self.store.open_jobs() if self.store is not None else []
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="jobs-dispatch"),
            asyncio.create_task(self._status_loop(), name="jobs-status"),
        ]
        if recovered:
            self._spawn(Recovery(self).take_up(recovered), "jobs-recover")
        self._wake_up()

    async def close(self, *, notify_timeout: float = 5.0) -> None:
        """Stop feeding engines. Jobs stay in the job table and resume at the next start;
        members whose reply can still be edited are told so (within ``notify_timeout``).

        A job that is ending (its image on its way to Discord or already there, or its
        member being told the outcome) is let finish first, for up to ``notify_timeout``:
        cancelling it there left a posted image's job ``posting`` and told its member that
        the request would run when the bot is back, with a Cancel button that could no
        longer cancel anything.
        """
        if self._closed:
            return
        self._closed = True
        for loop_task in self._loops:  # nothing new is handed to an engine from here on
            loop_task.cancel()
        ending = [task for task in self._ending if task is not asyncio.current_task()]
        if ending:
            _, late = await asyncio.wait(ending, timeout=notify_timeout)
            for task in late:
                log.warning("job task %s was still ending after %.0f s; it resumes at the next start",
                            task.get_name(), notify_timeout)
        self.poster.closing = True
        running = [*self._loops, *self._tasks]
        for task in running:
            task.cancel()
        if running:
            # Bounded: a task that swallows its cancellation must not hold the shutdown forever.
            _, stuck = await asyncio.wait(running, timeout=notify_timeout)
            for task in stuck:
                log.error("job task %s did not stop within %.0f s of being cancelled", task.get_name(), notify_timeout)
        waiting = [job for job in self.jobs.values() if not job.state.final and job.token_usable()]
        if waiting:
            work = [self.board.final(job, text=stop_text(job), keep_view=job.state != JobState.POSTING)
                    for job in waiting]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*work, return_exceptions=True), notify_timeout)
        await self.board.close()
        await self.pool.close()

    async def wait_settled(self, within: float) -> list[Job]:
        """Wait until every job has ended and its member was told; the jobs still open after
        ``within`` seconds (none: all settled). Read from the job table, the source of truth,
        where there is one, so a job taken up after a restart counts too."""
        deadline = time.monotonic() + within
        while True:
            if self.store is not None:
                left = await self.store.open_jobs()
            else:
                left = list(self.jobs.values())
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.1)

    @contextlib.contextmanager
    def _ending_here(self) -> Iterator[None]:
        """Marks the current task as ending a job, so :meth:`close` lets it finish first."""
        task = asyncio.current_task()
        if task is None or task in self._ending:  # an outer frame of this task marked it already
            yield
            return
        self._ending.add(task)
        try:
            yield
        finally:
            self._ending.discard(task)

    def _spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task %s crashed", task.get_name(), exc_info=task.exception())

    def _wake_up(self) -> None:
        self._wake.set()

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, job: Job, *, user_limit: int, server_limit: int, active_limit: int) -> Job:
        """Write ``job`` to the table and queue it; :class:`QueueFull` says why it cannot be."""
        if self._closed:
            raise QueueFull("The bot is restarting; try again in a minute.")
        # Checked and counted in one step (no await in between): submits that run
        # concurrently each see the ones before them, so none can pass a full cap.
        self.admission.admit(job, user_limit=user_limit, server_limit=server_limit)
        job.state = JobState.QUEUED
        if self.store is not None:
            try:
                await self.store.add(job)
            except BaseException:
                self.admission.release(job)  # not written, so not queued: its place is free again
                raise
        # After the write, with the add below: the scheduler forgets the limits of idle servers.
        self.scheduler.active_limit[job.guild_id] = active_limit
        newcomer = self.scheduler.is_newcomer(job.guild_id)
        self.scheduler.add(job)
        if newcomer:
            self._make_room_for(job.guild_id)
        self._estimate_position(job)
        self._wake_up()
        return job

    def _make_room_for(self, guild_id: int) -> None:
        """A server's first job while every engine is full: take back the other servers' jobs
        that wait in an engine's queue, so this one goes next instead of behind them."""
        for slot in self.pool.healthy():
            if len(slot.units) < self.pool.depth:
                continue
            for job in slot.jobs():
                if job.state == JobState.SUBMITTED and job.guild_id != guild_id and not job.withdrawn:
                    job.withdrawn = True
                    self._spawn(self._withdraw(job, slot), f"jobs-withdraw-{job.id}")

    async def _withdraw(self, job: Job, slot: EngineSlot) -> None:
        # Its follow task sees the engine's "cancelled" and queues it again (see JobFollower.follow); a
        # job whose submit has not gone out yet is held back by _hand_over instead.
        try:
            await asyncio.wait_for(slot.client.cancel(job.engine_job_id), 10)
        except EngineError as exc:
            if exc.code != ErrorCode.UNKNOWN_JOB:  # unknown: not submitted yet, see above
                log.info("could not take job %s back from %s: %s", job.id, slot.name, exc)
                job.withdrawn = False
            return
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            log.info("could not take job %s back from %s: %s", job.id, slot.name, exc)
            job.withdrawn = False
            return
        log.info("took job %s back from %s for another server's first job", job.id, slot.name)

    async def _requeue_withdrawn(self, job: Job) -> None:
        job.withdrawn, job.prepaid = False, True
        job.state, job.engine, job.step, job.total = JobState.QUEUED, None, 0, 0
        if self.store is not None:
            await self.store.save(job)
        self.scheduler.add(job)
        self._wake_up()

    async def attach_status(self, job: Job, message_id: int, text: str) -> None:
        """The member's private reply exists now (saying ``text``): it is the job's status."""
        job.status_message_id = message_id
        self.board.sent(job, text)
        if self.store is not None and not job.state.final:
            await self.store.save(job)
        if job.state.final:
            await self._tell(job)  # it ended before the reply existed
        else:
            self.board.mark(job)

    # -- views -------------------------------------------------------------------------------

    def open_jobs(self, guild_id: int | None = None, user_id: int | None = None) -> list[Job]:
        """Unfinished jobs: on engines first, then queued in the order they will run."""
        self._refresh_order()
        queued_ids = {job.id for job in self._order}
        on_engine = [j for j in self.jobs.values() if not j.state.final and j.id not in queued_ids
                     and j.state != JobState.QUEUED]
        queued = [j for j in self._order if not j.state.final]
        late = [j for j in self.jobs.values() if j.state == JobState.QUEUED and j.id not in queued_ids]
        jobs = [*sorted(on_engine, key=lambda j: j.created_at), *queued, *late]
        return [
            j for j in jobs
            if (guild_id is None or j.guild_id == guild_id) and (user_id is None or j.user_id == user_id)
        ]

    def engines_down(self) -> bool:
        return not self.pool.healthy()

    def posted_job(self, message_id: int) -> Job | None:
        """A result posted moments ago whose recipe may not be in the database yet."""
        return self._recent_posts.get(message_id)

    def _cost(self, job: Job) -> float:
        return self.speed.estimate(job.recipe)

    def _render(self, job: Job) -> str:
        return status_text(job, engines_down=self.engines_down())

    def _refresh_order(self, *, force: bool = False) -> None:
        """Positions and ETAs of every queued job, from the fair order (at most every 0.25 s)."""
        now = time.monotonic()
        if not force and (self._order_version == self.scheduler.version or now - self._order_at < 0.25):
            return
        self._order = list(self.scheduler.fair_order())
        self._order_version, self._order_at = self.scheduler.version, now
        engines = max(1, len(self.pool.healthy()) or len(self.pool.slots))
        busy = [job for slot in self.pool.slots for job in slot.jobs()]
        ahead_s = 0.0
        for job in busy:
            estimate = self._cost(job)
            if job.state == JobState.RUNNING and job.total:
                estimate *= max(0.0, 1 - job.step / job.total)
            ahead_s += estimate
        ahead = len(busy)
        for job in self._order:
            job.position = ahead
            job.eta_s = ahead_s / engines
            ahead += 1
            ahead_s += self._cost(job)

    def _estimate_position(self, job: Job) -> None:
        self._refresh_order()
        if job in self._order:
            return
        last = self._order[-1] if self._order else None
        job.position = (last.position + 1) if last else sum(len(s.jobs()) for s in self.pool.slots)
        job.eta_s = ((last.eta_s or 0) + self._cost(last) / max(1, len(self.pool.healthy()))) if last else 0.0

    # -- cancel ------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, a running one at its next step; False if too late."""
        job = self.jobs.get(job_id)
        if job is None or job.state.final or job.state == JobState.POSTING:
            return False
        job.cancel_requested = True
        if self.scheduler.remove(job):
            await self._finish(job, JobState.CANCELLED)
            return True
        if self.store is not None:
            await self.store.save(job)
        slot = self.pool.slot(job.engine)
        if slot is not None:
            with contextlib.suppress(EngineError, OSError, TimeoutError):
                await asyncio.wait_for(slot.client.cancel(job.engine_job_id), 10)
        return True

    async def cancel_all(self, guild_id: int, user_id: int) -> int:
        jobs = self.open_jobs(guild_id, user_id)
        results = await asyncio.gather(*(self.cancel(job.id) for job in jobs))
        return sum(results)

    # -- the loops ---------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_once()
            except Exception:
                log.exception("the dispatch loop failed; it goes on")
                await asyncio.sleep(0.5)

    async def _dispatch_once(self) -> None:
        assignments = self.scheduler.plan(self.pool.views())
        for assignment in assignments:
            slot = self.pool.slot(assignment.engine)
            assert slot is not None
            now = time.time()
            for job in assignment.jobs:
                job.state, job.engine, job.submitted_at = JobState.SUBMITTED, slot.key, now
                job.attempts += 1
                job.waiting_for, job.retry_deadline, job.step, job.total = None, None, 0, 0
                self.board.mark(job)
            slot.hand_over(assignment.jobs)
            if self.store is not None:
                await self.store.save_many(assignment.jobs)  # written before the engine sees them
            self._spawn(self._hand_over(slot, assignment.jobs), f"jobs-submit-{slot.name}")

    async def _status_loop(self) -> None:
        pruned = time.monotonic()
        while not self._closed:
            await asyncio.sleep(self.status_interval)
            try:
                self._status_tick()
                if self.store is not None and time.monotonic() - pruned > PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    await self.store.prune()
            except Exception:
                log.exception("the status loop failed; it goes on")

    def _status_tick(self) -> None:
        self._refresh_order()
        now_wall, now = time.time(), time.monotonic()
        for job in list(self.jobs.values()):
            if job.state.final:
                continue
            if job.state == JobState.QUEUED and job.retry_deadline is not None and now > job.retry_deadline:
                self._spawn(self._give_up_waiting(job), f"jobs-expire-{job.id}")
                continue
            if not job.token_usable(now_wall):
                continue
            if job.state == JobState.QUEUED and job.token_expires_at is not None and (
                job.token_expires_at - now_wall < FAREWELL_S
            ):
                self._spawn(self.board.farewell(job), f"jobs-farewell-{job.id}")
                continue
            self.board.mark(job)

    async def _give_up_waiting(self, job: Job) -> None:
        if not self.scheduler.remove(job):
            return
        job.error = _with_request(job, ENGINE_GONE.format(wait=describe_duration(self.retry_wait)))
        await self._finish(job, JobState.FAILED)

    # -- on the engine -----------------------------------------------------------------------

    async def _hand_over(self, slot: EngineSlot, jobs: list[Job]) -> None:
        """Submit ``jobs`` back to back (so the engine can batch them), then follow each."""
        for index, job in enumerate(jobs):
            if job.cancel_requested or job.withdrawn:  # before it even reached the engine
                await self._leave_engine(job, slot)
                if job.cancel_requested:
                    await self._finish(job, JobState.CANCELLED)
                else:
                    await self._requeue_withdrawn(job)
                continue
            try:
                await self._send_input(slot, job)
                await slot.client.submit(job.engine_job_id, job.recipe)
                if job.cancel_requested or job.withdrawn:  # while the submit was on its way
                    self._spawn(self._withdraw(job, slot), f"jobs-withdraw-{job.id}")
            except EngineError as exc:
                if exc.code == ErrorCode.ENGINE_UNAVAILABLE:
                    # Never reached the engine (down, or its queue full): queue them again.
                    self.pool.mark_down(slot, exc.message)
                    for rest in jobs[index:]:
                        await self._leave_engine(rest, slot)
                        rest.attempts -= 1
                        await self.follower.engine_lost(rest, slot, exc.message, counts=False)
                    return
                await self._leave_engine(job, slot)
                await self._fail_job(job, exc.code, exc.message)
                continue
            self._spawn(self.follower.follow(job, slot), f"jobs-follow-{job.id}")

    async def _send_input(self, slot: EngineSlot, job: Job) -> None:
        """An image-to-image job's input, and an edit's reference pictures, go to its engine
        first, with every (re)submission: the engine only holds inputs in a bounded cache
        (``POST /inputs``). All are read before any is sent, so a gone one sends nothing."""
        digests = job.recipe.pictures
        if not digests:
            return
        from bot.pictures import gone_message

        pictures = []
        for digest in digests:
            data = await self.inputs.read(digest) if self.inputs is not None else None
            if data is None:
                raise EngineError(ErrorCode.INVALID_RECIPE, gone_message(getattr(self.inputs, "max_age_s", 30 * 86400.0)))
            pictures.append(data)
        for data in pictures:
            await slot.client.put_input(data)

    async def _leave_engine(self, job: Job, slot: EngineSlot) -> None:
        slot.release(job)
        self.scheduler.left_engine(job)
        self._wake_up()

    # -- outcomes ----------------------------------------------------------------------------

    async def _post(self, job: Job, images: list[bytes], seconds: float | None) -> None:
        with self._ending_here():
            await self._post_now(job, images, seconds)

    async def _post_now(self, job: Job, images: list[bytes], seconds: float | None) -> None:
        job.state, job.posting_at, job.seconds = JobState.POSTING, time.time(), seconds
        if self.store is not None:
            await self.store.save(job)
        self.board.mark(job)
        try:
            message = await self.poster.post_result(job, images, seconds)
        except PostRefused as exc:
            await self._fail_text(job, exc.text)
            return
        await self._posted(job, message)

    async def _posted(self, job: Job, message: discord.Message) -> None:
        """Discord holds the image: record the post, end the job, tell the member."""
        with self._ending_here():  # also when recovery found the post of a previous process
            job.result_message_ids = (message.id,)
            self._recent_posts[message.id] = job
            while len(self._recent_posts) > RECENT_POSTS:
                self._recent_posts.pop(next(iter(self._recent_posts)))
            if self.on_result is not None:
                try:
                    await self.on_result(job, message, job.seconds or 0.0)
                except Exception:
                    log.exception("recording the post of job %s failed", job.id)
            await self._finish(job, JobState.DONE)

    async def _fail_job(self, job: Job, code: str, message: str) -> None:
        if code in (ErrorCode.INTERNAL, ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.UNKNOWN_JOB):
            # The engine's own words here are for its operator (exception text, addresses).
            log.error("job %s failed on the engine: %s: %s", job.id, code, message)
            message = ("The image engine failed while making this image; the error was logged "
                       "for the bot's operator. Try again, and tell an admin if it keeps happening.")
        await self._fail_text(job, describe_error(code, public_error(message, job.recipe)))

    async def _fail_text(self, job: Job, text: str) -> None:
        job.error = _with_request(job, text)
        await self._finish(job, JobState.FAILED)

    async def _finish(self, job: Job, state: JobState) -> None:
        """Record the outcome, then tell the member (a restart in between tells them again)."""
        job.state, job.finished_at = state, time.time()
        self.scheduler.remove(job)
        if self.store is not None:
            await self.store.save(job)
        self.admission.release(job)
        self._wake_up()
        await self._tell(job)

    async def reply_lost(self, job: Job) -> None:
        """The member's private reply could not be sent; outcomes go to the channel then."""
        job.reply_lost = True
        if job.state.final and not job.told:
            await self._tell(job)

    async def _tell(self, job: Job) -> None:
        with self._ending_here():
            await self._tell_now(job)

    async def _tell_now(self, job: Job) -> None:
        if job.status_message_id is None and job.token_usable() and not job.reply_lost:
            return  # the private reply is on its way; attach_status tells the outcome there
        result = await self.board.final(job)
        if result != "ok" and job.state == JobState.FAILED:
            # The private reply is gone (expired token): the member is told in the channel.
            await self.poster.notify_channel(job, job.error or "your image could not be made.")
        job.told = True
        job.forget_token()
        if self.store is not None:
            await self.store.save(job)
