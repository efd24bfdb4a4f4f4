"""Run a real discord.py client against a :class:`DiscordDouble`.

discord.py has two addresses: ``discord.http.Route.BASE`` (read each time a Route is built,
webhooks and interaction callbacks included) and ``DiscordWebSocket.DEFAULT_GATEWAY`` (a
``yarl.URL``; a plain ``Client`` connects there without asking ``GET /gateway/bot``).
Pointing both at the double is all it takes: no monkey-patching of methods.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import discord
import yarl
from discord.gateway import DiscordWebSocket

from sandbox.discord_double.double import DiscordDouble

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.contextmanager
def patch_discord_endpoints(double: DiscordDouble) -> Iterator[None]:
    """Point discord.py's REST base and gateway at ``double`` for the duration of the block."""
    previous_base = discord.http.Route.BASE
    previous_gateway = DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = double.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(double.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = previous_base
        DiscordWebSocket.DEFAULT_GATEWAY = previous_gateway


@contextlib.asynccontextmanager
async def run_bot(
    client: ClientT,
    double: DiscordDouble,
    token: str | None = None,
    *,
    ready_timeout: float = 15.0,
) -> AsyncIterator[ClientT]:
    """Start ``client`` with its real ``start()`` against ``double``; yield once ``on_ready`` fired.

    Login, ``setup_hook`` (where bots sync their command tree) and the gateway handshake all
    happen over the wire. ``on_ready`` waits ``guild_ready_timeout`` (2 s by default) after the
    last GUILD_CREATE: build test clients with ``guild_ready_timeout=0.1`` to keep tests fast.
    On exit the client is closed and its task awaited, and discord.py's addresses restored.
    A client that fails to start (e.g. ``LoginFailure`` for a wrong token) raises here.
    """
    with patch_discord_endpoints(double):
        task = asyncio.create_task(client.start(token or double.token), name="sandbox-bot")
        try:
            await _wait_ready(client, task, ready_timeout)
            yield client
        finally:
            if not client.is_closed():
                await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(task, 10)
                except (discord.DiscordException, OSError):
                    # Already surfaced by _wait_ready when it prevented startup.
                    pass


async def _wait_ready(client: discord.Client, task: asyncio.Task[None], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not client.is_ready():
        if task.done():
            task.result()  # re-raises why the client stopped (LoginFailure, HTTPException...)
            raise RuntimeError("the client stopped before it became ready")
        if loop.time() > deadline:
            raise TimeoutError(
                f"the client was not ready after {within} s; a bot with the members intent and "
                "chunk_guilds_at_startup waits for member chunks, and on_ready waits "
                "guild_ready_timeout after the last GUILD_CREATE"
            )
        await asyncio.sleep(0.02)
