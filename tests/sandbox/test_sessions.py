"""Gateway sessions over time: reconnect-and-resume, and a bot restarted on the same 'Discord'."""

from __future__ import annotations

import discord
import pytest

from sandbox.discord_double import DiscordDouble, run_bot
from tests.sandbox.conftest import World, until
from tests.sandbox.sandbox_bot import SandboxBot


async def test_reconnect_request_is_resumed(world: World) -> None:
    double = world.double
    first_session = double.sessions[0]
    await double.request_reconnect()
    await double.wait_until_connected(within=10)
    session = double.sessions[-1]
    assert session is not first_session
    assert 6 in session.received_ops and 2 not in session.received_ops  # RESUME, not IDENTIFY
    handle = await double.slash(world.alice, world.channel, "whereami")
    assert (await handle.wait_original()).content.startswith("you are in Studio")


async def test_persistent_buttons_work_after_a_restart(double: DiscordDouble) -> None:
    guild = double.add_guild("Studio")
    channel = double.add_channel(guild, "general")
    alice = double.add_member(guild, "alice")
    async with run_bot(SandboxBot(), double):
        render = await double.slash(alice, channel, "render", {"prompt": "x"})
        message = await render.wait_followup()
    assert double.sessions == []
    restarted = SandboxBot()
    async with run_bot(restarted, double):
        click = await double.click(alice, message, "sandbox:ping")
        assert (await click.wait_original()).content == "pong"
        assert ("clicked", alice.user.id, message.id) in restarted.events
    assert len(double.requests_matching("GET /users/@me")) == 2


async def test_guild_commands_are_found_by_guild_id(double: DiscordDouble) -> None:
    guild = double.add_guild("Studio")
    channel = double.add_channel(guild, "general")
    other = double.add_channel(double.add_guild("Elsewhere"), "general")
    alice = double.add_member(guild, "alice")
    async with run_bot(SandboxBot(guild_id=guild.id), double):
        assert [c["name"] for c in double.registered_commands(guild)] == ["local"]
        handle = await double.slash(alice, channel, "local")
        assert handle.payload["data"]["guild_id"] == str(guild.id)
        assert (await handle.wait_original()).content == f"local to {guild.id}"
        with pytest.raises(LookupError):
            await double.slash(alice, other, "local")


async def test_people_posting_reach_on_message(world: World) -> None:
    seen: list[tuple[str, int]] = []

    async def on_message(message: discord.Message) -> None:
        seen.append((message.author.name, message.channel.id))

    world.bot.add_listener(on_message)
    await world.double.send_user_message(world.alice, world.channel, "hi bot")
    await until(lambda: seen == [("alice", world.channel.id)])
