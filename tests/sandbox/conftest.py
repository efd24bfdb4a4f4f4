from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bot.sandbox import Channel, DiscordDouble, Guild, Member, run_bot
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
