"""An engine that hangs instead of crashing: the user is told, and the request is kept.

The engine here is a small aiohttp stand-in for a misbehaving engine process (the peer, not
the unit under test), because a real engine cannot be made to freeze on cue. It speaks the
real HTTP API of :mod:`engine.protocol`; the bot, its dispatcher and the real
:class:`engine.client.EngineClient` run unchanged. The registry is seeded from the real
engine's inspection of the demo files, as in every other bot test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import DiscordDouble, run_bot
from tests.bot.conftest import FAST, make_bot, seed_registry
from tests.conftest import ENGINE_TOKEN


@dataclass
class HangingEngine:
    """Starts every job, then either keeps sending heartbeats only (``stuck``: the process
    answers, its worker does not) or sends nothing at all and answers no request (``frozen``).
    """

    mode: Literal["stuck", "frozen", "working"]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    submitted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    heartbeats: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/jobs", self.submit)
        app.router.add_get("/jobs/{id}/events", self.events)
        app.router.add_post("/jobs/{id}/cancel", self.cancel)
        app.router.add_get("/jobs/{id}/images/{n}", self.image)
        app.router.add_get("/health", self.health)
        return app

    async def image(self, request: web.Request) -> web.Response:
        from tests.standin_engine import tiny_png

        return web.Response(body=tiny_png("a stuck mill\nSteps: 2, Seed: 1, Size: 8x8"), content_type="image/png")

    async def submit(self, request: web.Request) -> web.Response:
        job_id = (await request.json())["id"]
        self.submitted.append(job_id)
        return web.json_response({"id": job_id, "state": "queued"}, status=202)

    async def events(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for event in ({"type": "queued", "position": 0}, {"type": "started"}):
            await response.write(json.dumps({**event, "job": job_id}).encode() + b"\n")
        if self.mode == "working":
            done = {"type": "done", "job": job_id, "images": 1, "seconds": 0.1}
            await response.write(json.dumps(done).encode() + b"\n")
            return response
        try:
            while not self.release.is_set():
                if self.mode == "stuck":
                    beat = {"type": "heartbeat", "job": job_id}
                    await response.write(json.dumps(beat).encode() + b"\n")
                    self.heartbeats += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 0.1)
        except ConnectionResetError:
            pass  # the bot hung up; this stream is over
        return response

    async def cancel(self, request: web.Request) -> web.Response:
        self.cancelled.append(request.match_info["id"])
        return web.json_response({"id": request.match_info["id"], "state": "running"})

    async def health(self, _request: web.Request) -> web.Response:
        if self.mode == "frozen" and self.submitted:  # it froze while making the first job
            await self.release.wait()
        return web.json_response({"status": "ok"})


@pytest.fixture
async def studio(engine_url: str, demo_assets: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """A Discord double and a registry seeded from the real engine."""
    async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        async with EngineClient(engine_url, token=ENGINE_TOKEN) as real_engine:
            await seed_registry(registry, guild.id, real_engine, demo_assets, guild.owner_id)
        yield double, registry, channel, alice


async def _serve(engine: HangingEngine) -> TestServer:
    server = TestServer(engine.app(), host="127.0.0.1")
    await server.start_server()
    return server


async def test_a_job_that_makes_no_progress_is_stopped_and_its_request_kept(studio: Any) -> None:
    double, registry, channel, alice = studio
    hanging = HangingEngine("stuck")
    server = await _serve(hanging)
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/"), event_timeout_s=0.5) as engine:
            bot = make_bot(registry, engine, retry_wait=1.0, stall_limit=1.5)
            async with run_bot(bot, double):
                handle = await double.slash(alice, channel, "imagine", {**FAST, "prompt": "a stuck mill"})
                assert await handle.wait_response(3) == 5
                failed = await double.wait_for_message(
                    channel, lambda m: "made no progress" in m.content, within=30
                )
    finally:
        hanging.release.set()
        await server.close()
    assert "no progress on this job for 1.5 s" in failed.content
    assert "Your request, to run it again" in failed.content and "a stuck mill" in failed.content
    # Heartbeats kept the stream open past the client's 0.5 s read timeout without
    # counting as progress, and a stuck engine is not retried: one submit, then a cancel.
    assert hanging.heartbeats > 5
    # (The bot's shutdown may cancel it once more: it cancels whatever it still holds.)
    assert len(hanging.submitted) == 1 and set(hanging.cancelled) == set(hanging.submitted)
    assert "engine stopped" not in failed.content
    assert double.violations == []


@dataclass
class StuckEngineProcess:
    """The part of :class:`bot.engine_link.process.EngineProcess` the dispatcher uses; a restart
    turns the stuck stand-in into a working one, as a fresh engine process would be."""

    engine: HangingEngine
    restarts: int = 0
    state: str = "running"
    on_exit: Any = None

    async def restart(self, reason: str) -> None:
        self.restarts += 1
        self.engine.mode = "working"


async def test_a_stalled_job_on_an_engine_the_bot_owns_restarts_it_and_runs_once_more(studio: Any) -> None:
    from bot.jobs import EngineLink

    double, registry, channel, alice = studio
    hanging = HangingEngine("stuck")
    server = await _serve(hanging)
    process = StuckEngineProcess(hanging)
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/"), event_timeout_s=0.5) as engine:
            bot = make_bot(registry, None, engines=[EngineLink(engine, process)], retry_wait=30, stall_limit=1.5)  # type: ignore[arg-type]
            async with run_bot(bot, double):
                handle = await double.slash(alice, channel, "imagine", {**FAST, "prompt": "a stuck mill"})
                assert await handle.wait_response(3) == 5
                result = await double.wait_for_message(channel, lambda m: bool(m.attachments), within=30)
    finally:
        hanging.release.set()
        await server.close()
    assert process.restarts == 1 and len(hanging.submitted) == 2  # stopped, restarted, run once more
    assert hanging.submitted[0].endswith(".1") and hanging.submitted[1].endswith(".2")
    assert f"<@{alice.user.id}>" in result.content
    assert double.violations == []


async def test_an_engine_that_stops_answering_is_reported_and_the_request_kept(studio: Any) -> None:
    double, registry, channel, alice = studio
    frozen = HangingEngine("frozen")
    server = await _serve(frozen)
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/"), event_timeout_s=0.5) as engine:
            bot = make_bot(registry, engine, retry_wait=1.0)
            async with run_bot(bot, double):
                handle = await double.slash(alice, channel, "imagine", {**FAST, "prompt": "a frozen lake"})
                assert await handle.wait_response(3) == 5
                status = await double.wait_for_message(
                    channel, lambda m: "engine stopped" in m.content, within=30
                )
                failed = await double.wait_for_message(
                    channel, lambda m: m.id == status.id and "did not come back" in m.content, within=30
                )
    finally:
        frozen.release.set()
        await server.close()
    # Told privately (the reply to /imagine), with the request to run again; no engine address.
    assert failed.ephemeral and failed.id == handle.original.id
    assert "Your request, to run it again" in failed.content and "a frozen lake" in failed.content
    assert "127.0.0.1" not in failed.content and "python -m engine" not in failed.content
    assert frozen.submitted and not frozen.heartbeats
    assert double.violations == []
