"""The job table: every field survives a round trip, and a restart finds what it must take up."""

from __future__ import annotations

import time
from pathlib import Path

from bot.jobs import Job, JobState, JobStore
from bot.registry import Registry
from engine.protocol import LoraRef, Recipe


async def test_a_job_round_trips_and_open_jobs_are_the_unfinished_and_the_untold(tmp_path: Path) -> None:
    async with await Registry.open(tmp_path / "a.sqlite3") as registry:
        store = JobStore(registry.database)
        recipe = Recipe(model="m.safetensors", prompt="a fox", loras=(LoraRef("l.safetensors", 0.7, "ink"),), seed=9)
        job = Job(
            recipe=recipe, guild_id=1, channel_id=2, user_id=3, user_name="alice", origin="remix",
            notes=("added a trigger word",), weight=2, application_id=4, interaction_token="tok",
            token_expires_at=time.time() + 800, parent_message_id=5, parent_channel_id=2,
            parent_credit=("🎛️ Remix of this image", "https://discord.com/channels/1/2/5"),
        )  # fmt: skip
        await store.add(job)
        job.state, job.attempts, job.engine, job.status_message_id = JobState.RUNNING, 1, "http://e", 77
        await store.save(job)
        again = await store.get(job.id)
        assert again is not None
        for name in ("recipe", "guild_id", "user_name", "origin", "notes", "weight", "state", "attempts",
                     "engine", "interaction_token", "status_message_id", "parent_credit", "parent_message_id"):
            assert getattr(again, name) == getattr(job, name), name
        assert again.engine_job_id == f"{job.id}.1"
        failed_untold = Job(recipe=recipe, guild_id=1, channel_id=2, user_id=3, user_name="a", state=JobState.FAILED)
        done = Job(recipe=recipe, guild_id=1, channel_id=2, user_id=3, user_name="a", state=JobState.DONE, told=True,
                   finished_at=time.time() - 3 * 24 * 3600)  # fmt: skip
        for other in (failed_untold, done):
            await store.add(other)
        assert {j.id for j in await store.open_jobs()} == {job.id, failed_untold.id}
        assert await store.prune() == 1  # the old, told one
