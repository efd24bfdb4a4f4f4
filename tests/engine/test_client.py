"""The bot-side client: importable without torch, and one clear error when the engine is gone.

The client against a live engine is exercised end to end in ``test_server.py``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.client import EngineClient
from engine.protocol import EngineError, ErrorCode, Recipe


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_importing_the_client_does_not_import_torch() -> None:
    code = (
        "import sys, engine.client, engine.protocol;"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors.torch') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_every_call_says_the_engine_is_not_running_when_nothing_listens() -> None:
    port = _free_port()
    async with EngineClient(f"http://127.0.0.1:{port}") as client:
        calls = [
            client.health(),
            client.submit("j", Recipe(model="m.safetensors", prompt="p")),
            client.status("j"),
            client.cancel("j"),
            client.image("j", 0),
            client.inspect("lora", "x.safetensors"),
            client.list_files("model"),
        ]
        for call in calls:
            with pytest.raises(EngineError) as caught:
                await call
            assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
            assert "not running" in caught.value.message
            assert str(port) in caught.value.message
        with pytest.raises(EngineError) as caught:
            async for _ in client.events("j"):
                pass
        assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE


async def test_a_missing_unix_socket_is_reported_the_same_way(tmp_path: Path) -> None:
    async with EngineClient(unix_socket=str(tmp_path / "engine.sock")) as client:
        with pytest.raises(EngineError) as caught:
            await client.health()
    assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
    assert "engine.sock" in caught.value.message


async def test_wait_ready_gives_up_after_its_timeout() -> None:
    client = EngineClient(f"http://127.0.0.1:{_free_port()}")
    try:
        with pytest.raises(EngineError, match="did not become ready within 0.3 s") as caught:
            await client.wait_ready(0.3, interval=0.05)
        assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
    finally:
        await client.close()


async def test_an_answer_that_is_not_the_engine_s_json_is_an_engine_error() -> None:
    """Something else on the port (or a broken engine) gives a coded error, not a JSON crash."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def garbage(_request: web.Request) -> web.Response:
        return web.Response(body=b"<html>not an engine", content_type="application/json")

    async def garbage_events(_request: web.Request) -> web.Response:
        return web.Response(body=b"<html>\n", content_type="application/x-ndjson")

    app = web.Application()
    app.router.add_get("/health", garbage)
    app.router.add_get("/jobs/j/events", garbage_events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/")) as client:
            with pytest.raises(EngineError) as caught:
                await client.health()
            assert caught.value.code is ErrorCode.INTERNAL and "not JSON" in caught.value.message
            with pytest.raises(EngineError) as caught:
                async for _ in client.events("j"):
                    pass
            assert caught.value.code is ErrorCode.INTERNAL
    finally:
        await server.close()


async def test_an_engine_that_goes_silent_mid_stream_is_reported_as_stopped_answering() -> None:
    """A frozen engine: it sends the first event, then nothing, without closing the stream.

    The peer here is a stand-in for the frozen engine process; the client is the real one.
    """
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    release = asyncio.Event()

    async def frozen_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"type": "queued", "job": "j", "position": 0}\n')
        await release.wait()  # frozen: the connection stays open and says nothing more
        return response

    app = web.Application()
    app.router.add_get("/jobs/j/events", frozen_events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    received: list[dict[str, object]] = []
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/"), event_timeout_s=0.5) as client:
            with pytest.raises(EngineError) as caught:
                async with asyncio.timeout(30):  # a hang fails the test instead of blocking it
                    async for event in client.events("j"):
                        received.append(event)
    finally:
        release.set()
        await server.close()
    assert received == [{"type": "queued", "job": "j", "position": 0}]
    assert caught.value.code is ErrorCode.ENGINE_UNAVAILABLE
    assert "stopped answering" in caught.value.message
    assert "0.5 s" in caught.value.message and "'j'" in caught.value.message


async def test_an_error_code_this_client_does_not_know_keeps_its_message() -> None:
    """A newer engine's code becomes INTERNAL with the engine's own words, never a ValueError."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def newer_engine(_request: web.Request) -> web.Response:
        body = {"error": {"code": "gpu_overheated", "message": "the GPU is too hot; wait"}}
        return web.json_response(body, status=503)

    app = web.Application()
    app.router.add_get("/health", newer_engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/")) as client:
            with pytest.raises(EngineError) as caught:
                await client.health()
    finally:
        await server.close()
    assert caught.value.code is ErrorCode.INTERNAL
    assert caught.value.message == "the GPU is too hot; wait"
    direct = EngineError("gpu_overheated", "too hot")
    assert (direct.code, direct.message, str(direct)) == (ErrorCode.INTERNAL, "too hot", "too hot")
    assert EngineError("cancelled", "stop").code is ErrorCode.CANCELLED
