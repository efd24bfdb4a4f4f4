"""The bot-side job queue: from a validated recipe to a posted image, whatever happens.

Why a queue in the bot when the engine has one: the bot must answer Discord within 3 s no
matter how many jobs wait, enforce a per-user limit before anything costs GPU time, keep
one status message per job fresh without hitting rate limits, and survive an engine crash
without losing a request. So the bot holds the jobs and feeds the engine a few at a time
(``engine_slots``); the engine only ever sees what it is about to run.

Results are posted as new channel messages, never through the interaction token: the token
expires after 15 minutes and a queue can be longer than that.

Two ways an engine can stop serving a job, told apart because the advice differs:

- the engine process stops answering (crashed, or frozen whole): the client's read timeout
  on the event stream, which the engine's heartbeats keep from firing while it is alive,
  raises ``ENGINE_UNAVAILABLE``; the job waits for the engine to come back and runs again.
- the process answers (heartbeats keep coming) but the job makes no progress: a worker
  stuck in a driver call, a deadlock. Heartbeats cannot show this, so each job has a
  generous stall limit (``stall_limit``, 15 minutes): no job event for that long and the
  job is cancelled on the engine and failed with its request, since running it again on
  the same stuck engine would only stall again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import discord

from bot import embeds
from bot.recipe_text import imagine_command, public_error
from bot.safety import screen_for_channel
from engine.protocol import EngineError, ErrorCode, Recipe

log = logging.getLogger(__name__)

#: Default upload limit when no interaction told us better (Discord's default since 2025).
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
#: A whole multipart request may not exceed this.
REQUEST_LIMIT = 25 * 1024 * 1024
#: Status messages of jobs further back than this show their position once and are then
#: left alone until they come closer, so a queue of hundreds does not mean hundreds of edits
#: every time one job finishes.
LIVE_POSITIONS = 10
#: Longest a job may go without an event (heartbeats do not count) before it is given up.
#: Generous on purpose: the first use of a large model can spend minutes loading before its
#: first step, and one step of a big image on a small GPU can take a minute.
DEFAULT_STALL_LIMIT_S = 15 * 60.0

ADVICE: dict[str, str] = {
    ErrorCode.ARCH_MISMATCH: "Pick LoRAs made for the same architecture as the model.",
    ErrorCode.LORA_NO_MATCH: "This LoRA file does not fit the model; an admin should check its architecture.",
    ErrorCode.UNKNOWN_FILE: "The file is missing from the engine's folder; ask an admin to check the registry.",
    ErrorCode.CORRUPT_FILE: "The file is damaged; ask an admin to replace or remove it.",
    ErrorCode.UNSUPPORTED_FORMAT: "The engine cannot apply this LoRA's format; ask an admin to remove it or convert it.",
    ErrorCode.OUT_OF_MEMORY: "Try a smaller size, fewer images or fewer LoRAs.",
    ErrorCode.ENGINE_UNAVAILABLE: (
        "The image engine is not running or stopped answering; try again in a minute, "
        "and tell an admin if it keeps happening."
    ),
}


class EngineLike(Protocol):
    """What the dispatcher needs from :class:`engine.client.EngineClient`."""

    async def submit(self, job_id: str, recipe: Recipe) -> Any: ...
    def events(self, job_id: str) -> Any: ...
    async def cancel(self, job_id: str) -> Any: ...
    async def image(self, job_id: str, n: int) -> bytes: ...
    async def health(self) -> Any: ...


class QueueFull(Exception):
    """The user (or the whole bot) has too many jobs waiting; the message says what to do."""


class JobStalled(Exception):
    """The engine answers but sent nothing about this job for ``stall_limit`` seconds.

    Deliberately not a TimeoutError or OSError: those mean the engine is gone and send the
    job down the wait-and-retry path, which would only stall again on a stuck engine.
    """


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"


@dataclass
class Job:
    recipe: Recipe
    guild_id: int
    channel_id: int
    user_id: int
    user_name: str
    file_limit: int = DEFAULT_FILE_LIMIT
    notes: tuple[str, ...] = ()
    #: Why the job exists ("imagine", "reroll", "remix"); shown in the status line.
    origin: str = "imagine"
    #: The message this job was rerolled/remixed/made from, and how the result credits it
    #: ((label, link) for the embed); recorded by ``on_result`` (see bot.recipe_actions).
    parent_message_id: int | None = None
    parent_channel_id: int | None = None
    parent_credit: tuple[str, str] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.monotonic)
    state: str = "queued"
    position: int = 0
    step: int = 0
    total: int = 0
    status_message: discord.Message | None = None
    result_message: discord.Message | None = None
    error: str | None = None
    cancel_requested: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


ResultHook = Callable[[Job, discord.Message, float], Awaitable[None]]


def _status_text(job: Job) -> str:
    prompt = embeds.truncate(job.recipe.prompt.replace("\n", " "), 80)
    who = f"<@{job.user_id}>"
    if job.state == "queued":
        where = "next up" if job.position == 0 else f"position {job.position + 1} in the queue"
        return f"⏳ {who} · {job.origin} queued, {where} · *{prompt}*"
    if job.state == "running":
        if job.total:
            percent = int(100 * job.step / job.total)
            bar = "█" * (percent // 10) + "░" * (10 - percent // 10)
            return f"🎨 {who} · generating `{bar}` {job.step}/{job.total} ({percent}%) · *{prompt}*"
        return f"🎨 {who} · loading the model and LoRAs · *{prompt}*"
    if job.state == "done":
        link = job.result_message.jump_url if job.result_message else ""
        return f"✅ {who} · done {link}".strip()
    if job.state == "waiting_engine":
        return f"⚠️ {who} · the image engine stopped; your request is kept and runs again when it is back · *{prompt}*"
    if job.state == "cancelled":
        return f"🚫 {who} · cancelled · *{prompt}*"
    return f"⚠️ {who} · {job.error or 'failed'}"


class StatusMessage:
    """One status message per job, edited at most once every ``interval`` seconds.

    Intermediate states are coalesced: only the newest text is sent when the interval has
    passed. Final states are sent at once (after any edit in flight).
    """

    def __init__(self, job: Job, interval: float, view_factory: Callable[[Job], discord.ui.View | None]):
        self.job = job
        self.interval = interval
        self.view_factory = view_factory
        self._last_sent = 0.0
        self._last_text = ""
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def post(self, channel: discord.abc.Messageable) -> None:
        text = embeds.truncate(_status_text(self.job), embeds.CONTENT_LIMIT)
        try:
            self.job.status_message = await channel.send(
                text, view=self.view_factory(self.job), allowed_mentions=discord.AllowedMentions.none()
            )
            self._last_text, self._last_sent = text, time.monotonic()
        except discord.HTTPException as exc:
            log.warning("could not post status for job %s: %s", self.job.id, exc)

    def update(self) -> None:
        """Schedule an edit with the job's current state, throttled."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        wait = self._last_sent + self.interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._send(final=False)

    def cancel(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    async def finish(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
        await self._send(final=True)

    async def _send(self, *, final: bool) -> None:
        message = self.job.status_message
        if message is None:
            return
        async with self._lock:
            text = embeds.truncate(_status_text(self.job), embeds.CONTENT_LIMIT)
            if text == self._last_text and not final:
                return
            try:
                await message.edit(
                    content=text,
                    view=None if final else self.view_factory(self.job),
                    allowed_mentions=discord.AllowedMentions.none(),
                )
                self._last_text, self._last_sent = text, time.monotonic()
            except (discord.HTTPException, RuntimeError, OSError) as exc:
                # RuntimeError: the HTTP session closed because the bot is shutting down.
                log.warning("could not edit status for job %s: %s", self.job.id, exc)


def _shrink_png(data: bytes, limit: int) -> bytes | None:
    """Make a PNG fit ``limit`` bytes, keeping its ``parameters`` text; None if impossible.

    First a lossless re-compression, then halving the size until it fits (at most 4 times).
    """
    from PIL import Image, PngImagePlugin  # imported lazily: only oversize images need it

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        info = PngImagePlugin.PngInfo()
        for key, value in (image.text if hasattr(image, "text") else {}).items():
            info.add_text(key, value)
        current = image
        for _ in range(5):
            out = io.BytesIO()
            current.save(out, format="PNG", optimize=True, pnginfo=info)
            if out.tell() <= limit:
                return out.getvalue()
            width, height = current.size
            if width < 64 or height < 64:
                return None
            current = current.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    return None


def fit_files(images: Sequence[bytes], file_limit: int) -> tuple[list[bytes], list[str]]:
    """Images that respect the per-file and per-request limits, and notes about any change."""
    per_file = min(file_limit, REQUEST_LIMIT // max(1, len(images)))
    fitted: list[bytes] = []
    notes: list[str] = []
    for index, data in enumerate(images, 1):
        if len(data) <= per_file:
            fitted.append(data)
            continue
        smaller = _shrink_png(data, per_file)
        if smaller is None:
            notes.append(
                f"image {index} is {len(data) / 2**20:.1f} MiB, over this server's "
                f"{per_file / 2**20:.1f} MiB upload limit even when scaled down; it was not posted"
            )
        else:
            fitted.append(smaller)
            notes.append(f"image {index} was scaled down to fit the {per_file / 2**20:.0f} MiB upload limit")
    return fitted, notes


def describe_error(code: str, message: str) -> str:
    advice = ADVICE.get(code, "")
    return f"{message} {advice}".strip()


class Dispatcher:
    """Hold jobs, feed the engine ``engine_slots`` at a time, post every outcome."""

    def __init__(
        self,
        client: discord.Client,
        engine: EngineLike,
        *,
        status_interval: float = 2.0,
        engine_slots: int = 1,
        max_pending: int = 500,
        retry_wait: float = 60.0,
        stall_limit: float = DEFAULT_STALL_LIMIT_S,
        view_factory: Callable[[Job], discord.ui.View | None] = lambda job: None,
        result_view: Callable[[Job], discord.ui.View | None] = lambda job: None,
        on_result: ResultHook | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.status_interval = status_interval
        self.engine_slots = engine_slots
        self.max_pending = max_pending
        self.retry_wait = retry_wait
        self.stall_limit = stall_limit
        self.view_factory = view_factory
        self.result_view = result_view
        self.on_result = on_result
        self.waiting: list[Job] = []
        self.running: dict[str, Job] = {}
        self.jobs: dict[str, Job] = {}
        self._status: dict[str, StatusMessage] = {}
        self._unrecorded: dict[int, Job] = {}
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- queue -------------------------------------------------------------------------
    def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"dispatch-worker-{n}")
                for n in range(self.engine_slots)
            ]

    async def close(self, *, notify_timeout: float = 5.0) -> None:
        """Stop the workers; tell everyone still waiting, with their request to run again."""
        self._closed = True
        running, pending = list(self.running.values()), [*self.running.values(), *self.waiting]
        for task in [*self._workers, *self._tasks]:
            task.cancel()
        for task in [*self._workers, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        # A job whose image is already in the channel was made; only its status edit was cut off.
        posted = [job for job in pending if job.result_message is not None]
        pending = [job for job in pending if job.result_message is None]
        for job in posted:
            job.state = "done"
        for job in pending:
            job.state = "failed"
            job.error = (
                "the bot was stopped before this image was made. Your request, to run it again:\n"
                f"`{embeds.truncate(imagine_command(job.recipe), 1500)}`"
            )
        work = [self._status[job.id].finish() for job in [*posted, *pending] if job.id in self._status]
        work += [self.engine.cancel(job.id) for job in running]  # no GPU time for nobody
        if work:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*work, return_exceptions=True), notify_timeout)
        self._status.clear()

    def pending_for(self, user_id: int, guild_id: int | None = None) -> list[Job]:
        return [
            job
            for job in [*self.running.values(), *self.waiting]
            if job.user_id == user_id and (guild_id is None or job.guild_id == guild_id)
        ]

    def queue_snapshot(self, guild_id: int | None = None) -> list[Job]:
        """Running jobs first, then waiting ones in order."""
        jobs = [*self.running.values(), *self.waiting]
        return [j for j in jobs if guild_id is None or j.guild_id == guild_id]

    async def submit(self, job: Job, *, user_limit: int) -> Job:
        """Queue ``job`` and post its status message; raises :class:`QueueFull`."""
        mine = self.pending_for(job.user_id, job.guild_id)
        if user_limit > 0 and len(mine) >= user_limit:
            raise QueueFull(
                f"You already have {len(mine)} image job(s) waiting, the most this server allows "
                f"({user_limit}). Wait for one to finish, or cancel one with its Cancel button."
            )
        if len(self.waiting) + len(self.running) >= self.max_pending:
            raise QueueFull(
                f"The queue is full ({self.max_pending} jobs). Try again in a few minutes."
            )
        job.position = len(self.waiting)
        self.waiting.append(job)
        self.jobs[job.id] = job
        status = StatusMessage(job, self.status_interval, self.view_factory)
        self._status[job.id] = status
        await status.post(self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id))
        self._wakeup.set()
        return job

    def _reposition(self) -> None:
        for index, job in enumerate(self.waiting):
            if job.position != index:
                job.position = index
                if index < LIVE_POSITIONS:
                    self._status[job.id].update()

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job. Returns False if it already finished."""
        job = self.jobs.get(job_id)
        if job is None or job.done.is_set():
            return False
        job.cancel_requested = True
        if job in self.waiting:
            self.waiting.remove(job)
            await self._finish(job, "cancelled")
            self._reposition()
            return True
        with contextlib.suppress(Exception):
            await self.engine.cancel(job.id)
        return True

    async def _worker(self) -> None:
        while not self._closed:
            if not self.waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job = self.waiting.pop(0)
            self._reposition()
            self.running[job.id] = job
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop the queue
                log.exception("job %s crashed the dispatcher", job.id)
                job.error = f"something went wrong on the bot's side ({type(exc).__name__})."
                await self._finish(job, "failed")
            finally:
                self.running.pop(job.id, None)

    # -- one job -----------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                images, seconds = await self._run_once(job)
                break
            except JobStalled as exc:
                # Free the engine if it can still be freed (a truly stuck worker cannot).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.engine.cancel(job.id), timeout=10)
                if job.cancel_requested:
                    await self._finish(job, "cancelled")
                    return
                await self._fail(job, ErrorCode.INTERNAL, str(exc))
                return
            except EngineError as exc:
                if exc.code == ErrorCode.CANCELLED or job.cancel_requested:
                    await self._finish(job, "cancelled")
                    return
                if exc.code == ErrorCode.ENGINE_UNAVAILABLE and attempts == 1:
                    if await self._engine_back(job):
                        continue
                await self._fail(job, exc.code, exc.message)
                return
            except (TimeoutError, OSError, ConnectionError) as exc:
                if job.cancel_requested:
                    await self._finish(job, "cancelled")
                    return
                if attempts == 1 and await self._engine_back(job):
                    continue
                await self._fail(job, ErrorCode.ENGINE_UNAVAILABLE, f"The image engine stopped ({type(exc).__name__}).")
                return
            except Exception as exc:
                if type(exc).__module__.startswith("aiohttp"):
                    if attempts == 1 and await self._engine_back(job):
                        continue
                    await self._fail(job, ErrorCode.ENGINE_UNAVAILABLE, "The image engine stopped answering.")
                    return
                raise
        await self._post_result(job, images, seconds or (time.monotonic() - started))

    async def _engine_back(self, job: Job) -> bool:
        """After a lost connection: wait up to ``retry_wait`` for the engine, then retry once."""
        job.state, job.error = "waiting_engine", None
        job.step = job.total = 0
        status = self._status.get(job.id)
        if status is not None:
            status.update()
        deadline = time.monotonic() + self.retry_wait
        while time.monotonic() < deadline and not self._closed:
            try:
                await asyncio.wait_for(self.engine.health(), timeout=2)
                log.info("engine is back; retrying job %s", job.id)
                return True
            except Exception:
                await asyncio.sleep(0.5)
        return False

    async def _run_once(self, job: Job) -> tuple[list[bytes], float | None]:
        status = self._status[job.id]
        await self.engine.submit(job.id, job.recipe)
        seconds: float | None = None
        count = 0
        loop = asyncio.get_running_loop()
        stream = self.engine.events(job.id)
        # The stall clock covers the job's wait in the engine's own queue too: the bot feeds
        # the engine only what it is about to run, so a long silent wait there means the job
        # ahead is stuck (possibly one of ours, given up but never freed).
        deadline = loop.time() + self.stall_limit
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        event = await anext(stream)
                except StopAsyncIteration:
                    raise ConnectionError(
                        "the engine closed the event stream before the job finished"
                    ) from None
                except TimeoutError:
                    if not scope.expired():
                        raise  # the engine client's own timeout: the engine is gone
                    raise JobStalled(
                        f"The image engine still answers but made no progress on this job for "
                        f"{_duration(self.stall_limit)}, so the job was stopped; the engine may "
                        "be stuck. An admin should check the engine's log and restart it if "
                        "this happens again."
                    ) from None
                kind = event.get("type")
                if kind == "heartbeat":
                    continue  # the engine is alive; says nothing about this job's progress
                deadline = loop.time() + self.stall_limit
                if self._on_event(job, status, event):
                    count = int(event.get("images", job.recipe.count))
                    seconds = event.get("seconds")
                    break
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
        images = [await self.engine.image(job.id, n) for n in range(count)]
        return images, seconds

    def _on_event(self, job: Job, status: StatusMessage, event: dict[str, Any]) -> bool:
        """Show one job event; True once the job is done, EngineError if it failed."""
        kind = event.get("type")
        if kind == "queued":
            job.state = "queued"
            job.position = int(event.get("position", 0))  # jobs ahead of it in the engine
            status.update()
        elif kind == "started":
            job.state = "running"
            status.update()
        elif kind == "progress":
            job.state = "running"
            job.step, job.total = int(event.get("step", 0)), int(event.get("total", 0))
            status.update()
        elif kind == "done":
            return True
        elif kind == "failed":
            error = event.get("error") or {}
            raise EngineError(error.get("code", ErrorCode.INTERNAL), error.get("message", "failed"))
        return False

    async def _post_result(self, job: Job, images: list[bytes], seconds: float) -> None:
        # Re-encoding oversize PNGs takes CPU seconds; in a thread, so the event loop keeps
        # acknowledging everyone else's interactions within Discord's 3 seconds meanwhile.
        fitted, notes = await asyncio.to_thread(fit_files, images, job.file_limit)
        # The image check (bot.safety): flagged images withheld or spoilered where NSFW is not allowed.
        screened = await screen_for_channel(self.client, job.guild_id, job.channel_id, fitted)
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        files = [
            discord.File(io.BytesIO(data), filename=f"atelier-{job.recipe.seed + i}.png", spoiler=spoiler)
            for i, data, spoiler in screened.files
        ]
        embed = embeds.recipe_embed(
            job.recipe,
            requester=job.user_name,
            seconds=seconds,
            notes=[*job.notes, *notes, *screened.notes],
            parent=job.parent_credit,
        )
        try:
            message = await channel.send(
                content=f"<@{job.user_id}>",
                embed=embed,
                files=files,
                view=self.result_view(job),
                # Only the requester: a prompt or name must never ping @everyone or a role.
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, replied_user=False, users=[discord.Object(job.user_id)]
                ),
            )
        except discord.HTTPException as exc:
            log.error("posting the result of job %s failed: %s", job.id, exc)
            await self._fail(
                job,
                ErrorCode.INTERNAL,
                f"Discord refused the image ({exc.status}: {exc.text or 'no reason'}).",
            )
            return
        job.result_message = message
        # Until the post is recorded, a very quick click finds the job here (see posted_job).
        self._unrecorded[message.id] = job
        if self.on_result is not None:
            try:
                await self.on_result(job, message, seconds)
            except Exception:
                log.exception("recording the post of job %s failed", job.id)
        await self._finish(job, "done")
        self._unrecorded.pop(message.id, None)

    def posted_job(self, message_id: int) -> Job | None:
        """A result posted moments ago whose recipe may not be in the database yet."""
        return self._unrecorded.get(message_id)

    async def _fail(self, job: Job, code: str, message: str) -> None:
        job.error = (
            describe_error(code, public_error(message, job.recipe))
            + f"\nYour request is kept here, copy it to try again:\n`{embeds.truncate(imagine_command(job.recipe), 1500)}`"
        )
        await self._finish(job, "failed")

    async def _finish(self, job: Job, state: str) -> None:
        job.state = state
        status = self._status.pop(job.id, None)
        if status is not None:
            await status.finish()
        job.done.set()
        # Keep finished jobs out of memory once their buttons no longer need them.
        self.jobs.pop(job.id, None)
