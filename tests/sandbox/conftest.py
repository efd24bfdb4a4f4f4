from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from sandbox.discord_double import Channel, DiscordDouble, Guild, Member, run_bot
from tests.sandbox.sandbox_bot import SandboxBot


@dataclass
class World:
    double: DiscordDouble
    guild: Guild
    channel: Channel
    alice: Member
    admin: Member
    bot: SandboxBot


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as running:
        yield running


@pytest.fixture
async def world(double: DiscordDouble) -> AsyncIterator[World]:
    guild = double.add_guild("Studio")
    channel = double.add_channel(guild, "general")
    alice = double.add_member(guild, "alice")
    admin = double.add_member(guild, "mod", permissions=0x20)
    bot = SandboxBot()
    async with run_bot(bot, double):
        yield World(double, guild, channel, alice, admin, bot)
    # Every call discord.py made must have been served: a 404 from the catch-all means the
    # double lacks an endpoint, not that the bot is wrong.
    assert double.unserved == [], [f"{r.method} {r.path}" for r in double.unserved]


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    """Poll a condition the bot will make true on its own schedule (errors, events)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
