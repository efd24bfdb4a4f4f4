"""The bot as a process: no torch, small memory, engine and bot crashes survived, load absorbed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from bot.assembly import assembled
from bot.jobs import JobState, JobStore
from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import DiscordDouble, run_bot
from tests.bot.conftest import (
    FAST,
    World,
    bot_config,
    free_port,
    make_bot,
    png_parameters,
    seed_registry,
)
from tests.bot.test_imagine_flow import is_result
from tests.bot_process import end_process, spawn_bot
from tests.conftest import ENGINE_TOKEN

RSS_LIMIT = 150 * 1024 * 1024


async def wait_commands(double: DiscordDouble, within: float = 60) -> None:
    await double.wait_until_connected(within)
    deadline = time.monotonic() + within
    while not double.registered_commands() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def test_running_bot_has_no_torch_and_stays_under_150_mb(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        async with await Registry.open(tmp_path / "atelier.sqlite3") as registry, EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
        report = tmp_path / "report.json"
        # The budget is the bot's own: the optional image classifier (NudeNet on onnxruntime,
        # ~30 MB more) is off here, as main's in-process child never loaded it either.
        child = spawn_bot(
            double, tmp_path, engine_url, log=tmp_path / "bot.log", report=report,
            ATELIER_STATUS_INTERVAL="0.3", ATELIER_IMAGE_CLASSIFIER="off",
        )  # fmt: skip
        try:
            await wait_commands(double)
            handle = await double.slash(
                alice, channel, "imagine",
                {**FAST, "prompt": "a harbour <lora:pixel-art:0.4>", "lora1": "watercolor"},
            )  # fmt: skip
            assert await handle.wait_response(3) == 5
            result = await double.wait_for_message(channel, is_result, within=90)
            assert "<lora:pixel-art:0.4>" in png_parameters(result.attachments[0].data)
            rss = psutil.Process(child.pid).memory_info().rss
            child.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not report.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            loaded = json.loads(report.read_text())
            print(f"bot process RSS after a two-LoRA job: {rss / 2**20:.1f} MiB; modules: {loaded}")
            assert loaded["torch"] is False and loaded["diffusers"] is False and loaded["safetensors"] is False
            assert rss < RSS_LIMIT, f"the bot uses {rss / 2**20:.1f} MiB"
        finally:
            end_process(child)


async def test_engine_killed_mid_job_is_restarted_and_the_job_runs_once_more(
    demo_assets: Any, tmp_path: Path
) -> None:
    """The engine the bot starts itself, from its settings (bot.assembly, as ``python -m bot``)."""
    config = bot_config(
        data_dir=tmp_path, model_dir=demo_assets.model_root, lora_dir=demo_assets.lora_root,
        engine_port=free_port(), engine_start_timeout=180, engine_token=ENGINE_TOKEN, retry_wait=180,
    )  # fmt: skip
    async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
        async with assembled(config, registry=registry, guild_ready_timeout=0.1) as bot:
            engine_process = bot.engines.slots[0].process
            assert engine_process is not None and engine_process.running
            guild = double.add_guild("Studio")
            channel = double.add_channel(guild, "studio")
            alice = double.add_member(guild, "alice")
            await seed_registry(registry, guild.id, bot.engine, demo_assets, guild.owner_id)
            async with run_bot(bot, double):
                handle = await double.slash(
                    alice, channel, "imagine", {**FAST, "prompt": "a storm", "steps": 20, "count": 2, "seed": 5}
                )
                await handle.wait_response(3)
                status = await double.wait_for_message(channel, lambda m: m.content.startswith("🎨"), within=60)
                os.kill(engine_process.pid or 0, signal.SIGKILL)  # the engine dies mid-job
                await double.wait_for_message(
                    channel, lambda m: m.id == status.id and "engine stopped" in m.content, within=30
                )
                # The bot is alive and answering while the engine restarts.
                queue = await double.slash(alice, channel, "queue")
                assert await queue.wait_response(3) == 5
                assert "a storm" in str((await queue.wait_followup()).embeds)
                result = await double.wait_for_message(channel, is_result, within=240)
                assert len(result.attachments) == 2
                assert "Seed: 5" in png_parameters(result.attachments[0].data)
                assert engine_process.exits == [-signal.SIGKILL] and engine_process.restarts == 1
                await double.wait_for_message(channel, lambda m: m.id == status.id and m.content.startswith("✅"))
                assert len([m for m in double.messages(channel) if is_result(m)]) == 1
                assert double.violations == []
    assert not engine_process.running


async def test_bot_killed_with_jobs_queued_and_running_resumes_each_exactly_once(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    """SIGKILL of the bot with one job running and four queued; a new process on the same
    database finishes every one: one image each, none twice, nobody left without an answer."""
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        bob = double.add_member(guild, "bob")
        db = tmp_path / "atelier.sqlite3"
        async with await Registry.open(db) as registry, EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
            await registry.settings.update(guild.id, guild.owner_id, queue_limit_per_user=5)
        log = tmp_path / "bot.log"
        first = spawn_bot(double, tmp_path, engine_url, log=log, ATELIER_STATUS_INTERVAL="0.3")
        second = None
        try:
            await wait_commands(double)
            handles = []
            for index, who in enumerate([alice, bob, alice, bob, alice]):
                steps = 16 if index == 0 else 2
                handles.append(await double.slash(
                    who, channel, "imagine", {**FAST, "prompt": f"job {index}", "steps": steps, "seed": 100 + index}
                ))  # fmt: skip
            for handle in handles:
                assert await handle.wait_response(3) == 5
                await handle.wait_followup(within=30)
            # One running (its private reply shows progress), the others queued: now SIGKILL.
            await handles[0].wait_until(
                lambda: "Generating" in (handles[0].original.content if handles[0].original else ""),
                30, "progress of the first job",
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = spawn_bot(double, tmp_path, engine_url, log=log, ATELIER_STATUS_INTERVAL="0.3")
            await double.wait_until_connected(60)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                results = [m for m in double.messages(channel) if is_result(m)]
                if len(results) >= 5:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # time for a duplicate to show, if there were one
            results = [m for m in double.messages(channel) if is_result(m)]
            seeds = sorted(
                int(png_parameters(m.attachments[0].data).split("Seed: ")[1].split(",")[0]) for m in results
            )
            assert seeds == [100, 101, 102, 103, 104], seeds  # each job once: none lost, none twice
            for handle in handles:
                mine = [m for m in results if f"<@{handle.user.id}>" in m.content]
                assert mine
            # Every private reply ends saying the job is done (their tokens are still valid).
            for handle in handles:
                await handle.wait_until(
                    lambda h=handle: h.original is not None and h.original.content.startswith("✅"),
                    15, "the final status",
                )
            assert [v for v in double.violations if v.kind != "interaction_deadline_missed"] == []
        finally:
            end_process(first)
            if second is not None:
                end_process(second)
        async with await Registry.open(db) as registry:
            jobs = await JobStore(registry.database).recent_speeds(limit=10)
            opened = await JobStore(registry.database).open_jobs()
        assert opened == [] and len(jobs) == 5
        assert all(job.state == JobState.DONE and job.told for job in jobs)
        assert "Traceback" not in log.read_text()


async def test_status_edits_are_throttled(world: World) -> None:
    """One job with many progress events: its reply is edited about once per interval."""
    world.bot.dispatcher.board.interval = 2.0
    started = time.monotonic()
    handle = await world.double.slash(world.bob, world.channel, "imagine", {**FAST, "prompt": "counted", "steps": 12, "count": 2})
    assert await handle.wait_response(3) == 5
    await world.double.wait_for_message(world.channel, is_result, within=90)
    await handle.wait_until(lambda: handle.original is not None and handle.original.content.startswith("✅"), 10, "done")
    elapsed = time.monotonic() - started
    assert handle.original is not None
    assert handle.original.edits <= elapsed / 2.0 + 3, (handle.original.edits, elapsed)
    assert world.double.violations == []


async def test_stopping_the_bot_keeps_every_request_and_the_next_start_runs_them(world: World) -> None:
    await world.registry.settings.update(world.guild.id, world.admin.user.id, queue_limit_per_user=5)
    handles = [
        await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": f"left behind {i}", "steps": 12, "seed": 40 + i})
        for i in range(3)
    ]
    for handle in handles:
        await handle.wait_followup()
    await world.bot.close()
    waiting = [h for h in handles if h.original is not None and "restarting" in h.original.content]
    assert waiting, [h.original.content for h in handles if h.original]
    assert all("kept" in h.original.content for h in waiting if h.original)
    fresh = make_bot(world.registry, world.engine)
    async with run_bot(fresh, world.double):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len([m for m in world.double.messages(world.channel) if is_result(m)]) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
    results = [m for m in world.double.messages(world.channel) if is_result(m)]
    seeds = sorted(int(png_parameters(m.attachments[0].data).split("Seed: ")[1].split(",")[0]) for m in results)
    assert seeds == [40, 41, 42]
    assert world.double.violations == []

