"""The engine's job queue: one GPU, jobs in the order callers asked, compatible ones together.

When the job at the head of the queue starts, every queued job that can share its pipeline
call (:func:`batch_key`: same model, VAE, LoRA stack and weights, size, steps, sampler, CFG,
clip skip, embeddings and prediction type; prompts and seeds may differ) joins it, up to the runner's
``max_batch_images``: one batched call costs less than several. While they run, the next
job's files are read ahead (the runner's ``prefetch``).

Callers choose job ids so that a retried submit (a bot restart, a lost HTTP response) never
runs the same generation twice. Every event of a job is kept so a late listener sees the whole
story, and live listeners get each event as it happens. Images stay in memory only for a
bounded time and number of jobs: the bot fetches them right away, and a long-running engine
must not grow without limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.protocol import (
    TERMINAL_EVENTS,
    EngineError,
    ErrorCode,
    JobState,
    JobStatus,
    Recipe,
)
from engine.recipe.batching import batch_key
from engine.validation import DEFAULT_LIMITS, RecipeLimits, validate_recipe

log = logging.getLogger("engine.jobs")
_JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class GenerationOutcome(Protocol):
    images: list[bytes]
    seeds: list[int]
    timings: dict[str, Any]


class Runner(Protocol):
    """What the queue needs from a generator; :class:`engine.generate.Generator` is one."""

    def run(
        self,
        recipe: Recipe,
        *,
        on_step: Callable[[int, int], None],
        should_cancel: Callable[[], bool],
    ) -> GenerationOutcome: ...

    def health(self) -> dict[str, Any]: ...


@dataclass
class Job:
    id: str
    recipe: Recipe
    state: JobState = "queued"
    step: int = 0
    total_steps: int = 0
    images: list[bytes] = field(default_factory=list)
    images_expired: bool = False
    error: dict[str, str] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    cancel_requested: bool = False
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class JobManager:
    """FIFO queue in front of one runner, with replayable per-job event streams."""

    def __init__(
        self,
        runner: Runner,
        *,
        limits: RecipeLimits = DEFAULT_LIMITS,
        max_history: int = 1000,
        max_queued: int = 500,
        image_ttl_s: float = 1800.0,
        max_jobs_with_images: int = 64,
        max_image_bytes: int = 1 << 30,
        max_jobs_with_full_events: int = 64,
    ) -> None:
        self.runner = runner
        self.limits = limits
        self.max_history = max_history
        self.max_queued = max_queued
        self.image_ttl_s = image_ttl_s
        self.max_jobs_with_images = max_jobs_with_images
        self.max_image_bytes = max_image_bytes
        self.max_jobs_with_full_events = max_jobs_with_full_events
        self._finished_order: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._wakeup = asyncio.Event()
        #: Set while the worker has no job in hand; ``stop`` waits for it.
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None
        self.running: Job | None = None
        #: Every job of the pipeline call in progress (``running`` is the first of them).
        self.running_batch: list[Job] = []
        self.completed = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="engine-job-worker")

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """Refuse new jobs, cancel the queued ones, stop the running one at its next step.

        The running job's own "failed"/"cancelled" event goes out before the worker ends, so
        every listener is told how its job ended instead of being cut off; only a single step
        longer than ``grace_s`` is abandoned without one. Calling it twice is harmless.
        """
        self._stopping = True
        for job_id in list(self._queue):
            self.cancel(job_id)
        for running in self.running_batch:
            running.cancel_requested = True
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    # --- public operations -------------------------------------------------------------

    def submit(self, job_id: str, recipe: Recipe) -> JobStatus:
        existing = self._jobs.get(job_id)
        if existing is not None:
            return self._status(existing)
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise EngineError(
                ErrorCode.INVALID_RECIPE,
                "a job id must be 1 to 128 letters, digits or . _ : - (it goes in URLs)",
            )
        validate_recipe(recipe, self.limits)
        if self._stopping:
            raise EngineError(
                ErrorCode.ENGINE_UNAVAILABLE,
                "the engine is shutting down; submit the job again once it is back",
            )
        if len(self._queue) >= self.max_queued:
            raise EngineError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"the engine already has {len(self._queue)} jobs waiting; try again later",
            )
        job = Job(id=job_id, recipe=recipe, total_steps=recipe.steps * recipe.count)
        self._jobs[job_id] = job
        self._queue.append(job_id)
        self._emit(job, {"type": "queued", "position": self._position(job)})
        self._wakeup.set()
        self._trim_history()
        return self._status(job)

    def status(self, job_id: str) -> JobStatus:
        return self._status(self._get(job_id))

    def cancel(self, job_id: str) -> JobStatus:
        """Queued jobs leave at once; a running job stops at its next denoising step."""
        job = self._get(job_id)
        if job.state == "queued":
            with contextlib.suppress(ValueError):
                self._queue.remove(job_id)
            self._finish_cancelled(job)
        elif job.state == "running":
            job.cancel_requested = True
        return self._status(job)

    def image(self, job_id: str, index: int) -> bytes:
        job = self._get(job_id)
        self._expire_images()
        if job.images_expired:
            raise EngineError(
                ErrorCode.UNKNOWN_JOB,
                f"the images of job '{job_id}' are no longer kept (the engine keeps them "
                f"{int(self.image_ttl_s)} s); run the recipe again to get them back",
            )
        if not 0 <= index < len(job.images):
            raise EngineError(
                ErrorCode.UNKNOWN_JOB,
                f"job '{job_id}' has {len(job.images)} image(s) (state {job.state}); "
                f"there is no image {index}",
            )
        return job.images[index]

    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every past event, then live ones, ending after the terminal event."""
        job = self._get(job_id)
        backlog = list(job.events)
        listener: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        finished = bool(backlog) and backlog[-1]["type"] in TERMINAL_EVENTS
        if not finished:
            job.listeners.add(listener)
        try:
            for event in backlog:
                yield event
            if finished:
                return
            while True:
                event = await listener.get()
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
        finally:
            job.listeners.discard(listener)

    def queue_info(self) -> dict[str, Any]:
        return {
            "queued": len(self._queue),
            "running": self.running.id if self.running else None,
            "completed": self.completed,
        }

    def models_in_use(self) -> set[str]:
        """Base models of the jobs queued or running here.

        A caller that evicts models from the runner's cache (a cluster replica, when Serve's
        multiplexing drops one) must not evict one that a job here is about to use.
        """
        jobs = [*self.running_batch, *(self._jobs[job_id] for job_id in list(self._queue))]
        return {job.recipe.model for job in jobs}

    # --- internals ---------------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise EngineError(
                ErrorCode.UNKNOWN_JOB,
                f"no job '{job_id}' (it was never submitted, or it is older than the "
                f"{self.max_history} jobs the engine remembers)",
            )
        return job

    def _position(self, job: Job) -> int:
        if job.state != "queued":
            return 0
        try:
            ahead = self._queue.index(job.id)
        except ValueError:
            return 0
        return ahead + (1 if self.running is not None else 0)

    def _status(self, job: Job) -> JobStatus:
        return JobStatus(
            id=job.id,
            state=job.state,
            position=self._position(job),
            step=job.step,
            total_steps=job.total_steps,
            images=len(job.images),
            error=job.error,
            seconds=next((e.get("seconds") for e in reversed(job.events) if e["type"] == "done"), None),
        )

    def _emit(self, job: Job, event: dict[str, Any]) -> None:
        event = {"type": event["type"], "job": job.id, **event}
        job.events.append(event)
        for listener in list(job.listeners):
            listener.put_nowait(event)

    def _finish_cancelled(self, job: Job) -> None:
        job.state = "cancelled"
        job.error = {"code": ErrorCode.CANCELLED.value, "message": "the job was cancelled"}
        job.finished_at = time.monotonic()
        self._emit(job, {"type": "failed", "error": dict(job.error)})

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            self._idle.clear()
            batch = self._take_batch()
            self.running, self.running_batch = batch[0], batch
            self._prefetch_next()
            try:
                await self._run_batch(batch, loop)
            except Exception:  # the worker must survive anything a job does
                log.exception("jobs %s crashed the worker loop", [job.id for job in batch])
            finally:
                self.running, self.running_batch = None, []
                self.completed += len(batch)
                self._finished_order.extend(batch)
                self._compact_events()
                self._expire_images()

    def _take_batch(self) -> list[Job]:
        """The head of the queue and every queued job that can share its call, in order."""
        head = self._jobs[self._queue.popleft()]
        batch = [head]
        limit = int(getattr(self.runner, "max_batch_images", 1))
        if not hasattr(self.runner, "run_batch") or head.recipe.count >= limit:
            return batch
        key, images = batch_key(head.recipe), head.recipe.count
        for job_id in list(self._queue):
            job = self._jobs[job_id]
            if batch_key(job.recipe) == key and images + job.recipe.count <= limit:
                self._queue.remove(job_id)
                batch.append(job)
                images += job.recipe.count
        return batch

    def _prefetch_next(self) -> None:
        prefetch = getattr(self.runner, "prefetch", None)
        if prefetch is not None and self._queue:
            try:
                prefetch(self._jobs[self._queue[0]].recipe)
            except Exception:  # only an optimisation
                log.debug("prefetch failed", exc_info=True)

    async def _run_batch(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        for job in batch:
            job.state = "running"
            self._emit(job, {"type": "started", "batch_jobs": len(batch)})

        def progress_for(job: Job) -> Callable[[int, int], None]:
            def on_step(done: int, total: int) -> None:
                loop.call_soon_threadsafe(self._progress, job, done, total)

            return on_step

        started = time.perf_counter()
        try:
            if len(batch) == 1 and not hasattr(self.runner, "run_batch"):
                job = batch[0]
                results = [
                    await asyncio.to_thread(
                        functools.partial(
                            self.runner.run,
                            job.recipe,
                            on_step=progress_for(job),
                            should_cancel=lambda: job.cancel_requested,
                        )
                    )
                ]
            else:
                results = await asyncio.to_thread(
                    functools.partial(
                        self.runner.run_batch,  # type: ignore[attr-defined]
                        [job.recipe for job in batch],
                        on_step=[progress_for(job) for job in batch],
                        should_cancel=[(lambda job=job: job.cancel_requested) for job in batch],
                    )
                )
        except EngineError as exc:
            for job in batch:
                if exc.code is ErrorCode.CANCELLED or job.cancel_requested:
                    self._finish_cancelled(job)
                else:
                    self._fail(job, exc.code, exc.message)
            return
        except Exception as exc:
            code, message = _classify_crash(exc)
            if code is ErrorCode.INTERNAL:
                log.exception("jobs %s failed", [job.id for job in batch])
            for job in batch:
                self._fail(job, code, message)
            return
        seconds = time.perf_counter() - started
        for job, result in zip(batch, results, strict=True):
            if job.cancel_requested:  # cancelled while sharing a call that went on for others
                self._finish_cancelled(job)
                continue
            job.images = list(result.images)
            job.state = "done"
            job.finished_at = time.monotonic()
            timings = {
                k: round(float(v), 6) if isinstance(v, int | float) else v
                for k, v in dict(result.timings).items()
            }
            self._emit(
                job,
                {
                    "type": "done",
                    "images": len(job.images),
                    "seconds": round(seconds, 6),
                    "timings": timings,
                    "seeds": list(result.seeds),
                },
            )

    def _progress(self, job: Job, done: int, total: int) -> None:
        if job.finished:
            return
        job.step, job.total_steps = done, total
        self._emit(job, {"type": "progress", "step": done, "total": total})

    def _fail(self, job: Job, code: ErrorCode, message: str) -> None:
        job.state = "failed"
        job.error = {"code": code.value, "message": message}
        job.finished_at = time.monotonic()
        self._emit(job, {"type": "failed", "error": dict(job.error)})

    def _expire_images(self) -> None:
        """Drop images past their time, beyond the job count, or beyond the byte budget.

        The count alone is not a bound: 64 jobs of eight 2048x2048 PNGs are gigabytes.
        """
        now = time.monotonic()
        holding = [j for j in self._jobs.values() if j.images]
        holding.sort(key=lambda j: j.finished_at or now, reverse=True)  # newest first
        kept_bytes = 0
        for rank, job in enumerate(holding):
            kept_bytes += sum(len(image) for image in job.images)
            too_old = job.finished_at is not None and now - job.finished_at > self.image_ttl_s
            over_budget = rank > 0 and kept_bytes > self.max_image_bytes  # newest always kept
            if rank >= self.max_jobs_with_images or too_old or over_budget:
                job.images = []
                job.images_expired = True

    def _compact_events(self) -> None:
        """Older finished jobs keep only their last progress event.

        A 150-step, 8-image job has 1200 progress events; a long history of those would grow
        without need, and a listener arriving that late only wants the outcome.
        """
        while len(self._finished_order) > self.max_jobs_with_full_events:
            job = self._finished_order.popleft()
            progress = [e for e in job.events if e["type"] == "progress"]
            if len(progress) > 1:
                last = progress[-1]
                job.events = [e for e in job.events if e["type"] != "progress" or e is last]

    def _trim_history(self) -> None:
        if len(self._jobs) <= self.max_history:
            return
        for job_id in [j.id for j in self._jobs.values() if j.finished]:
            if len(self._jobs) <= self.max_history:
                break
            del self._jobs[job_id]


def _classify_crash(exc: BaseException) -> tuple[ErrorCode, str]:
    """Out-of-memory deserves its own advice; anything else is an engine bug to report."""
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in text:
        return (
            ErrorCode.OUT_OF_MEMORY,
            "the engine ran out of memory; try a smaller size, fewer images or fewer LoRAs",
        )
    return ErrorCode.INTERNAL, f"the engine failed unexpectedly ({name}: {text})"
