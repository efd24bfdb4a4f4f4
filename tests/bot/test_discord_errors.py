"""Discord's bad moments: transient errors are retried, permissions told only when real."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.jobs import JobState, JobStore, poster
from sandbox.discord_double.state import ATTACH_FILES
from tests.bot.conftest import FAST, World, make_bot
from tests.bot.test_imagine_flow import is_result


async def test_503s_and_a_reset_connection_on_the_result_post_are_retried_and_posted_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poster, "BACKOFF_FIRST_S", 0.1)  # the same backoff, ten times faster
    double = world.double
    double.fail("POST /channels/*/messages", count=2, status=503)
    double.reset_connections("POST /channels/*/messages", count=1)
    handle = await double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "through the storm", "seed": 8})
    assert await handle.wait_response(3) == 5
    result = await double.wait_for_message(world.channel, is_result, within=90)
    await handle.wait_until(lambda: handle.original is not None and handle.original.content.startswith("✅"), 15, "done")
    posts = double.requests_matching("POST /channels/*/messages")
    assert [r.status or r.fault for r in posts[:3]] == [503, 503, "reset"] and posts[3].status == 200
    assert len([m for m in double.messages(world.channel) if is_result(m)]) == 1
    assert "can't post" not in (handle.original.content if handle.original else "")
    assert result.embeds[0]["fields"][1]["value"] == "8"
    assert double.violations == []


async def test_a_real_permissions_error_is_told_privately_with_the_fix(world: World) -> None:
    double = world.double
    double.fail("POST /channels/*/messages", count=1, status=403, code=50013, message="Missing Permissions")
    handle = await double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "forbidden"})
    assert await handle.wait_response(3) == 5
    await handle.wait_until(
        lambda: handle.original is not None and "can't post in this channel" in handle.original.content,
        90, "the permissions message",
    )
    assert handle.original is not None and handle.original.ephemeral
    assert "Attach Files" in handle.original.content and "/imagine prompt:forbidden" in handle.original.content
    assert not any(is_result(m) for m in double.messages(world.channel))


async def test_missing_permissions_are_caught_before_any_gpu_time(world: World) -> None:
    double = world.double
    for role in (world.guild.everyone, world.guild.roles[0]):  # @everyone and the bot's own role
        role.permissions &= ~ATTACH_FILES
    handle = await double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "no files here"})
    assert await handle.wait_response(3) == 5
    reply = await handle.wait_followup()
    assert reply.ephemeral and "missing Attach Files" in reply.content
    assert world.bot.dispatcher.jobs == {}


async def test_failed_status_edits_do_not_cost_the_image(world: World) -> None:
    double = world.double
    double.fail("PATCH /webhooks/*", count=1, status=500)
    handle = await double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "edits fail", "seed": 3})
    assert await handle.wait_response(3) == 5
    await double.wait_for_message(world.channel, is_result, within=90)
    await handle.wait_until(lambda: handle.original is not None and handle.original.content.startswith("✅"), 30, "done")


async def test_a_size_a_stale_client_still_offers_gets_a_clear_answer(world: World) -> None:
    double = world.double
    # A client that has not reloaded the command list still shows an old size choice.
    for command in double.registered_commands():
        for option in command.get("options") or []:
            if option["name"] == "size":
                option["choices"].append({"name": "640×640 (old)", "value": "640x640"})
    handle = await double.slash(world.alice, world.channel, "imagine", {"prompt": "old size", "size": "640x640"})
    assert await handle.wait_response(3) == 5
    reply = await handle.wait_followup()
    assert "Size `640x640` is not one of the sizes offered" in reply.content and "`512x512`" in reply.content
    assert "Something went wrong" not in reply.content


async def test_after_a_restart_members_whose_reply_expired_are_told_in_one_channel_message(world: World) -> None:
    await world.registry.settings.update(world.guild.id, world.admin.user.id, queue_limit_per_user=5)
    # Slow jobs on the real engine so that some are still queued when the bot stops.
    handles = [
        await world.double.slash(who, world.channel, "imagine", {**FAST, "prompt": f"late {i}", "steps": 12, "seed": 60 + i})
        for i, who in enumerate([world.alice, world.bob, world.alice, world.bob])
    ]
    for handle in handles:
        await handle.wait_followup()
    await world.bot.close()
    # Twenty minutes pass before the bot is back: every interaction token has expired.
    store = JobStore(world.registry.database)
    waiting = [job for job in await store.open_jobs() if not job.state.final]
    assert waiting
    for job in waiting:
        job.token_expires_at = time.time() - 300
        world.double.expire_token(next(h for h in handles if h.token == job.interaction_token))
    await store.save_many(waiting)
    before = {m.id for m in world.double.messages(world.channel)}
    from sandbox.discord_double import run_bot

    async with run_bot(make_bot(world.registry, world.engine), world.double):
        notice = await world.double.wait_for_message(
            world.channel, lambda m: m.id not in before and m.content.startswith("🔄"), within=30
        )
        for job in waiting:
            assert f"<@{job.user_id}>" in notice.content
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len([m for m in world.double.messages(world.channel) if is_result(m)]) < 4:
            import asyncio

            await asyncio.sleep(0.2)
    notices = [m for m in world.double.messages(world.channel) if m.content.startswith("🔄")]
    assert len(notices) == 1  # one message for the channel, not one per job
    results = [m for m in world.double.messages(world.channel) if is_result(m)]
    assert sorted(int(m.embeds[0]["fields"][1]["value"]) for m in results) == [60, 61, 62, 63]
    assert all(job.state == JobState.DONE for job in await store.recent_speeds(limit=4))
    assert [v for v in world.double.violations if v.kind != "interaction_token_expired"] == []


async def test_a_stop_while_the_final_status_edit_is_rate_limited_does_not_hang(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # Every edit of the private reply is answered 429 with a long retry_after, so discord.py
    # sleeps in each one: the job finishes with its last status edit still waiting.
    double = world.double
    double.rate_limit("PATCH /webhooks/*", count=1000, retry_after=600)
    handle = await double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "stopped mid-edit"})
    assert await handle.wait_response(3) == 5
    await double.wait_for_message(world.channel, is_result, within=90)
    await asyncio.sleep(0.5)  # the job's task is now in its final status edit
    started = time.monotonic()
    await asyncio.wait_for(world.bot.close(), 30)  # before the fix: forever (the cancel was swallowed)
    assert time.monotonic() - started < 15
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
