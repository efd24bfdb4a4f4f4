"""The double's rate limits, met by discord.py's own bucket handling as it meets Discord's."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import discord

from sandbox.discord_double import DiscordDouble
from sandbox.discord_double.ratelimits import RateLimiter
from tests.sandbox.conftest import World


async def test_channel_message_bucket_is_5_per_5_s_and_discord_py_waits_instead_of_failing(
    world: World,
) -> None:
    channel = world.bot.get_partial_messageable(world.channel.id)
    started = time.monotonic()
    await asyncio.gather(*(channel.send(f"m{i}") for i in range(7)))
    elapsed = time.monotonic() - started
    posts = world.double.requests_matching("POST /channels/*/messages")
    assert len([m for m in world.double.messages(world.channel) if m.content.startswith("m")]) == 7
    # 7 messages need two 5-second windows: discord.py read the headers and waited.
    assert elapsed >= 4.5, elapsed
    assert sum(r.status == 429 for r in posts) <= 1  # at most the very first burst guessed wrong
    assert world.double.violations == []


async def test_interaction_token_webhooks_have_their_own_bucket(world: World) -> None:
    """Five channel posts exhaust the channel's bucket; a followup on the same channel still
    goes through at once, because interaction webhooks are keyed by the token."""
    double = world.double
    channel = world.bot.get_partial_messageable(world.channel.id)
    await asyncio.gather(*(channel.send(f"fill {i}") for i in range(5)))
    handle = await double.slash(world.alice, world.channel, "hello")
    await handle.wait_response()
    started = time.monotonic()
    webhook = discord.Webhook.partial(double.application_id, handle.token, client=world.bot)
    await webhook.send("via the token")
    assert time.monotonic() - started < 1.0
    headers_seen = double.requests_matching("POST /webhooks/*")
    assert headers_seen and all(r.status == 200 for r in headers_seen)


async def test_the_limiter_answers_like_discord() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0], global_limit=50)
    decisions = [limiter.check("POST", "/channels/1/messages", authenticated=True) for _ in range(6)]
    assert [d.headers.get("X-RateLimit-Remaining") for d in decisions[:5]] == ["4", "3", "2", "1", "0"]
    assert decisions[0].headers["X-RateLimit-Bucket"] == "channel-message-create"
    refused = decisions[5]
    assert refused.retry_after is not None and 4.9 < refused.retry_after <= 5.0
    assert refused.headers["Via"] and refused.headers["X-RateLimit-Scope"] == "user"
    # Another channel is another bucket (the major parameter); edits are a bucket of their own.
    assert limiter.check("POST", "/channels/2/messages", authenticated=True).retry_after is None
    assert limiter.check("PATCH", "/channels/1/messages/9", authenticated=True).retry_after is None
    now[0] = 5.01
    assert limiter.check("POST", "/channels/1/messages", authenticated=True).retry_after is None
    # The global limit: 50 per second over every route, interaction endpoints exempt.
    now[0] = 10.0
    for i in range(50 - 0):
        limiter.check("GET", f"/channels/{100 + i}", authenticated=True)
    over = limiter.check("GET", "/channels/999", authenticated=True)
    assert over.is_global and over.headers["X-RateLimit-Global"] == "true"
    assert limiter.check("POST", "/webhooks/1/tok/", authenticated=False).retry_after is None
    assert limiter.check("POST", "/interactions/1/tok/callback", authenticated=False).retry_after is None


async def test_a_client_that_ignores_the_headers_gets_429_with_retry_after(double: DiscordDouble) -> None:
    guild = double.add_guild("Studio")
    channel = double.add_channel(guild, "general")
    url = f"{double.api_base}/channels/{channel.id}/messages"
    headers = {"Authorization": f"Bot {double.token}"}
    statuses, bodies = [], []
    async with aiohttp.ClientSession() as session:
        for i in range(7):
            async with session.post(url, json={"content": f"x{i}"}, headers=headers) as response:
                statuses.append(response.status)
                if response.status == 429:
                    bodies.append((await response.json(), dict(response.headers)))
    assert statuses == [200] * 5 + [429, 429]
    body, reply_headers = bodies[0]
    assert body["global"] is False and 0 < body["retry_after"] <= 5
    assert reply_headers["Via"] and int(reply_headers["Retry-After"]) >= 1


async def test_a_nonce_with_enforce_nonce_returns_the_first_message(world: World) -> None:
    channel = world.bot.get_partial_messageable(world.channel.id)
    first = await channel.send("once", nonce="job-1")
    again = await channel.send("once", nonce="job-1")
    assert first.id == again.id
    assert [m.content for m in world.double.messages(world.channel)].count("once") == 1


async def test_injected_503_and_connection_reset_are_answered(world: World) -> None:
    double = world.double
    channel = world.bot.get_partial_messageable(world.channel.id)
    double.fail("POST /channels/*/messages", status=503)
    try:
        await channel.send("refused")
    except discord.DiscordServerError as exc:
        assert exc.status == 503  # discord.py does not retry 503 by itself
    else:
        raise AssertionError("a 503 should reach the caller")
    double.reset_connections("POST /channels/*/messages")
    try:
        await channel.send("cut off")
    except (aiohttp.ClientError, OSError):
        pass
    else:
        raise AssertionError("a reset connection should reach the caller")
    assert [r.fault for r in double.requests_matching("POST /channels/*/messages")] == ["http", "reset"]
