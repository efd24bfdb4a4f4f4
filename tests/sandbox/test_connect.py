"""Login, gateway handshake and the exact wire details discord.py depends on."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import discord
import pytest
import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket

from sandbox.discord_double import DiscordDouble, patch_discord_endpoints, run_bot
from tests.sandbox.conftest import World
from tests.sandbox.sandbox_bot import SandboxBot


async def test_login_ready_and_guild_available(world: World) -> None:
    double, bot = world.double, world.bot
    assert ("guild_available", "Studio") in bot.events
    assert ("ready", ["Studio"]) in bot.events
    paths = [f"{r.method} {r.path}" for r in double.requests]
    assert paths[:2] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    assert bot.user is not None and bot.user.id == double.bot_user.id
    assert bot.application_id == double.application_id
    session = double.sessions[0]
    assert session.intents == discord.Intents.default().value
    assert session.received_ops[:2] == [1, 2]  # discord.py heartbeats on HELLO, then identifies
    guild = bot.get_guild(world.guild.id)
    assert guild is not None and guild.get_channel(world.channel.id) is not None
    assert guild.owner_id == world.guild.owner_id


async def test_wrong_token_is_a_login_failure(double: DiscordDouble) -> None:
    with pytest.raises(discord.LoginFailure):
        async with run_bot(SandboxBot(), double, token="not-the-token"):
            pass
    assert double.requests[0].status == 401


async def test_endpoints_are_restored_after_the_block(double: DiscordDouble) -> None:
    before = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    with patch_discord_endpoints(double):
        assert discord.http.Route("GET", "/users/@me").url == double.api_base + "/users/@me"
        assert DiscordWebSocket.DEFAULT_GATEWAY == yarl.URL(double.gateway_url)
    assert (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == before


async def test_json_content_type_is_exactly_application_json(double: DiscordDouble) -> None:
    headers = {"Authorization": f"Bot {double.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(double.api_base + "/users/@me", headers=headers) as response:
            assert response.headers["Content-Type"] == "application/json"
            parsed = await discord.http.json_or_text(response)
    assert isinstance(parsed, dict) and parsed["id"] == str(double.bot_user.id)


async def test_charset_content_type_would_break_discord_py_parsing() -> None:
    """Why the double never uses aiohttp's json_response: discord.py compares the header with ==."""
    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": "1"})

    app = web.Application()
    app.router.add_get("/", user)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            assert isinstance(await discord.http.json_or_text(response), str)
    finally:
        await runner.cleanup()


async def test_rest_calls_need_the_bot_token(double: DiscordDouble) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(double.api_base + "/users/@me") as response:
            assert response.status == 401
            assert (await response.json())["message"] == "401: Unauthorized"


def test_the_sandbox_does_not_import_torch() -> None:
    code = "import sys, sandbox.discord_double; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
