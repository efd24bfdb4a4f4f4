"""A graceful stop (``bot.close()``, as on SIGTERM) tells each member the truth about their job."""

from __future__ import annotations

import pytest

from bot.jobs import JobState, JobStore, poster
from tests.bot.conftest import FAST, World
from tests.bot.test_imagine_flow import is_result


async def test_a_stop_just_after_the_image_was_posted_ends_the_job_done_not_restarting(world: World) -> None:
    """The stop comes the moment Discord holds the image, before the bot has recorded the post.

    Before the fix the stop cancelled the job's task there: the job stayed ``posting`` in the
    job table with no result and no end, and its member, whose image was in the channel, read
    "The bot is restarting. Your request is kept and runs when it is back." with a live Cancel.
    """
    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "posted at the stop", "seed": 21})
    assert await handle.wait_response(3) == 5
    await handle.wait_followup()
    result = await world.double.wait_for_message(world.channel, is_result, within=90)
    await world.bot.close()  # at once, as the demo did: the post's answer is still on its way

    store = JobStore(world.registry.database)
    assert await store.open_jobs() == []
    [job] = await store.history(world.guild.id, world.alice.user.id)
    assert job.state == JobState.DONE and job.told
    assert job.result_message_ids == (result.id,) and job.finished_at is not None
    assert handle.original is not None
    assert handle.original.content.startswith("✅"), handle.original.content
    assert "restarting" not in handle.original.content
    assert handle.original.buttons == []  # no Cancel on a job that has ended
    assert world.double.violations == []


async def test_a_stop_while_discord_keeps_failing_the_post_says_the_image_is_made_without_cancel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post Discord keeps refusing with 503s outlasts the stop's wait: the job stays ``posting``
    (the next start posts it, with the same nonce) and its reply says so, without a Cancel
    button that could not cancel a made image. Before: "runs when it is back", with Cancel."""
    monkeypatch.setattr(poster, "BACKOFF_FIRST_S", 0.1)
    world.double.fail("POST /channels/*/messages", count=10_000, status=503)
    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "held by discord", "seed": 22})
    assert await handle.wait_response(3) == 5
    await handle.wait_followup()
    await handle.wait_until(lambda: handle.original is not None and handle.original.content.startswith("📤"), 90, "posting")
    await world.bot.close()

    assert handle.original is not None
    assert "Your image is made" in handle.original.content and "runs when it is back" not in handle.original.content
    assert handle.original.buttons == []
    [job] = await JobStore(world.registry.database).open_jobs()
    assert job.state == JobState.POSTING and job.finished_at is None
