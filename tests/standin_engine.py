"""An engine that takes a fixed time per job: the peer for measuring the bot, not the GPU.

It speaks the real engine HTTP API (:mod:`engine.protocol`): idempotent job ids, replayable
NDJSON event streams with heartbeats, cancel, status, images, ``/health``. One job runs at a
time, as on one GPU, for ``seconds_per_job``; it records when each job ran, so a benchmark can
tell how busy the "GPU" was and in which order jobs started. Switching models costs
``switch_seconds`` extra, like loading a checkpoint does.

The bot under test talks to it through the real :class:`engine.client.EngineClient`. Used by
the load tests (a real tiny-model engine takes ~0.2 s of CPU per job here, too slow for 500
jobs in CI) and by ``python -m tests.bench.jobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.protocol import Recipe


def tiny_png(text: str) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 90, 160)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


@dataclass
class _Job:
    id: str
    recipe: Recipe
    state: str = "queued"
    events: list[dict[str, Any]] = field(default_factory=list)
    listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    images: list[bytes] = field(default_factory=list)
    cancel: bool = False


class StandinEngine:
    def __init__(self, seconds_per_job: float = 0.5, *, switch_seconds: float = 0.0, steps: int = 4) -> None:
        self.seconds_per_job = seconds_per_job
        self.switch_seconds = switch_seconds
        self.steps = steps
        self.jobs: dict[str, _Job] = {}
        self.queue: deque[str] = deque()
        #: (job id, start, end) of every run, in order (monotonic seconds).
        self.runs: list[tuple[str, float, float]] = []
        #: Wall-clock start of every run, by job id (to compare with the bot's job table).
        self.started_at: dict[str, float] = {}
        self.submits = 0
        self.loaded: str | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/jobs", self._submit)
        app.router.add_get("/jobs/{id}", self._status)
        app.router.add_get("/jobs/{id}/events", self._events)
        app.router.add_post("/jobs/{id}/cancel", self._cancel)
        app.router.add_get("/jobs/{id}/images/{n}", self._image)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._worker = asyncio.create_task(self._work())
        return self.url

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._runner is not None:
            await self._runner.cleanup()

    # -- measurements ------------------------------------------------------------------------

    def busy_fraction(self) -> float:
        """Time spent running jobs over the wall time from the first start to the last end."""
        if not self.runs:
            return 0.0
        busy = sum(end - start for _, start, end in self.runs)
        return busy / max(1e-9, self.runs[-1][2] - self.runs[0][1])

    def started_order(self) -> list[str]:
        return [job_id for job_id, _, _ in self.runs]

    def started_between(self, after: float, before: float) -> int:
        """Jobs that started after wall time ``after`` and before ``before``."""
        return sum(1 for moment in self.started_at.values() if after < moment < before)

    # -- the worker --------------------------------------------------------------------------

    def _emit(self, job: _Job, event: dict[str, Any]) -> None:
        event = {**event, "job": job.id}
        job.events.append(event)
        for listener in list(job.listeners):
            listener.put_nowait(event)

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            job = self.jobs[self.queue.popleft()]
            if job.state != "queued":
                continue
            job.state = "running"
            start = time.monotonic()
            self.started_at[job.id] = time.time()
            self._emit(job, {"type": "started"})
            if self.loaded != job.recipe.model:
                await asyncio.sleep(self.switch_seconds)
                self.loaded = job.recipe.model
            total = self.steps * max(1, job.recipe.count)
            for step in range(1, total + 1):
                await asyncio.sleep(self.seconds_per_job / total)
                if job.cancel:
                    break
                self._emit(job, {"type": "progress", "step": step, "total": total})
            end = time.monotonic()
            self.runs.append((job.id, start, end))
            if job.cancel:
                job.state = "cancelled"
                self._emit(job, {"type": "failed", "error": {"code": "cancelled", "message": "the job was cancelled"}})
                continue
            recipe = job.recipe
            job.images = [
                tiny_png(f"{recipe.prompt}\nSteps: {recipe.steps}, Seed: {recipe.seed + i}, Size: {recipe.width}x{recipe.height}")
                for i in range(max(1, recipe.count))
            ]
            job.state = "done"
            self._emit(job, {"type": "done", "images": len(job.images), "seconds": round(end - start, 6)})

    # -- HTTP --------------------------------------------------------------------------------

    def _status_json(self, job: _Job) -> dict[str, Any]:
        error = None
        if job.state == "cancelled":
            error = {"code": "cancelled", "message": "the job was cancelled"}
        return {"id": job.id, "state": job.state, "position": 0, "step": 0, "total_steps": 0,
                "images": len(job.images), "error": error}

    def _unknown(self, job_id: str) -> web.Response:
        return web.json_response({"error": {"code": "unknown_job", "message": f"no job '{job_id}'"}}, status=404)

    async def _submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        job_id = body["id"]
        self.submits += 1
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = _Job(job_id, Recipe.from_json(body["recipe"]))
            self.queue.append(job_id)
            self._emit(job, {"type": "queued", "position": len(self.queue)})
            self._wake.set()
        return web.json_response(self._status_json(job), status=202)

    async def _status(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        return self._unknown(request.match_info["id"]) if job is None else web.json_response(self._status_json(job))

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._unknown(request.match_info["id"])
        if job.state == "queued":
            job.state = "cancelled"
            self._emit(job, {"type": "failed", "error": {"code": "cancelled", "message": "the job was cancelled"}})
        elif job.state == "running":
            job.cancel = True
        return web.json_response(self._status_json(job))

    async def _image(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        index = int(request.match_info["n"])
        if job is None or not 0 <= index < len(job.images):
            return self._unknown(request.match_info["id"])
        return web.Response(body=job.images[index], content_type="image/png")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "loaded_model": self.loaded, "queue": {"queued": len(self.queue)}})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._unknown(request.match_info["id"])
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        listener: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        backlog = list(job.events)
        job.listeners.add(listener)
        try:
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
                if event["type"] in ("done", "failed"):
                    return response
            while True:
                try:
                    event = await asyncio.wait_for(listener.get(), 5.0)
                except TimeoutError:
                    event = {"type": "heartbeat", "job": job.id}
                await response.write(json.dumps(event).encode() + b"\n")
                if event["type"] in ("done", "failed"):
                    return response
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        finally:
            job.listeners.discard(listener)
