"""Admission under concurrency, and the job table's upkeep failing out loud.

The bot here is built as ``python -m bot`` builds it (``make_bot``, started through the Discord
double, so ``setup_hook`` gives the dispatcher its job store on the real SQLite file). The
engine address answers nothing: jobs stay queued, which is all admission needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.app import AtelierBot
from bot.jobs import Job, JobState, JobStore, QueueFull
from bot.registry import Registry
from engine.client import EngineClient
from engine.protocol import Recipe
from sandbox.discord_double import DiscordDouble, run_bot
from tests.bot.conftest import make_bot

#: Nothing listens there (the discard port): the engine is down for the whole test.
NO_ENGINE = "http://127.0.0.1:9"


@dataclass
class Running:
    bot: AtelierBot
    registry: Registry
    guild_id: int
    channel_id: int


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        async with EngineClient(NO_ENGINE) as engine, run_bot(make_bot(registry, engine), double) as bot:
            assert bot.dispatcher.store is not None  # setup_hook gave it the job table
            yield Running(bot, registry, guild.id, channel.id)


def _job(where: Running, user_id: int, n: int) -> Job:
    recipe = Recipe(model="m.safetensors", prompt=f"a lighthouse, take {n}", seed=n)
    return Job(recipe=recipe, guild_id=where.guild_id, channel_id=where.channel_id, user_id=user_id, user_name=f"u{user_id}")


async def _submit_all(where: Running, jobs: list[Job], **limits: int) -> tuple[list[Job], list[str]]:
    results = await asyncio.gather(
        *(where.bot.dispatcher.submit(job, **limits) for job in jobs), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Job)]
    refused = [str(r) for r in results if isinstance(r, QueueFull)]
    assert len(admitted) + len(refused) == len(jobs), results  # nothing else went wrong
    return admitted, refused


async def _table(where: Running) -> list[Job]:
    return await JobStore(where.registry.database).open_jobs()


async def test_concurrent_submits_of_one_member_stop_exactly_at_the_member_cap(running: Running) -> None:
    jobs = [_job(running, 5, n) for n in range(8)]
    admitted, refused = await _submit_all(running, jobs, user_limit=3, server_limit=100, active_limit=1)
    assert len(admitted) == 3 and len(refused) == 5
    assert all(text.startswith("You already have 3 image job(s) waiting, the most this server allows (3).")
               for text in refused), refused
    assert sorted(j.id for j in await _table(running)) == sorted(j.id for j in admitted)
    assert len(running.bot.dispatcher.open_jobs(running.guild_id, 5)) == 3
    # A refused submit left no count behind: one more is refused, and after one finishes, one fits.
    with pytest.raises(QueueFull, match="You already have 3"):
        await running.bot.dispatcher.submit(_job(running, 5, 99), user_limit=3, server_limit=100, active_limit=1)
    assert await running.bot.dispatcher.cancel(admitted[0].id)
    assert (await running.bot.dispatcher.submit(_job(running, 5, 100), user_limit=3, server_limit=100,
                                                active_limit=1)).state == JobState.QUEUED  # fmt: skip


async def test_concurrent_submits_of_many_members_stop_exactly_at_the_server_cap(running: Running) -> None:
    jobs = [_job(running, user, n) for n, user in enumerate(range(10, 22))]
    admitted, refused = await _submit_all(running, jobs, user_limit=5, server_limit=4, active_limit=1)
    assert len(admitted) == 4 and len(refused) == 8
    assert all(text.startswith("This server already has 4 image jobs waiting, the most it may have at once.")
               for text in refused), refused
    assert len(await _table(running)) == 4
    assert len(running.bot.dispatcher.open_jobs(running.guild_id)) == 4


async def test_a_failed_prune_at_start_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real SQLite failure (a trigger refuses the delete), not a stand-in store."""
    async with await Registry.open(tmp_path / "a.sqlite3") as registry:
        store = JobStore(registry.database)
        old = Job(recipe=Recipe(model="m.safetensors", prompt="p"), guild_id=1, channel_id=2, user_id=3,
                  user_name="a", state=JobState.DONE, told=True, finished_at=time.time() - 3 * 24 * 3600)  # fmt: skip
        await store.add(old)
        await registry.database.execute(
            "CREATE TRIGGER keep_jobs BEFORE DELETE ON jobs BEGIN SELECT RAISE(ABORT, 'jobs are read-only'); END"
        )
        caplog.set_level(logging.ERROR, logger="bot.jobs.dispatcher")
        async with DiscordDouble() as double, EngineClient(NO_ENGINE) as engine:
            double.add_guild("Studio")
            async with run_bot(make_bot(registry, engine), double):
                pass
        assert await store.get(old.id) is not None  # the delete really failed
        failures = [r for r in caplog.records if "deleting old finished jobs" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info is not None
        assert "jobs are read-only" in str(failures[0].exc_info[1])
