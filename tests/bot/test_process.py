"""The bot as a process: no torch, small memory, an engine crash survived, load absorbed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bot.dispatch import Job
from bot.engine_process import EngineProcess
from bot.registry import Registry
from bot.sandbox import DiscordDouble, run_bot
from engine.client import EngineClient
from engine.protocol import Recipe
from tests.bot.conftest import FAST, World, free_port, make_bot, png_parameters, seed_registry
from tests.bot.test_imagine_flow import imagine_and_wait, is_result
from tests.conftest import ENGINE_TOKEN

RSS_LIMIT = 150 * 1024 * 1024


async def test_running_bot_has_no_torch_and_stays_under_150_mb(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        db = tmp_path / "atelier.sqlite3"
        async with await Registry.open(db) as registry, EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
        report = tmp_path / "report.json"
        child = subprocess.Popen(  # noqa: ASYNC220 - psutil needs the pid of a plain child
            [
                sys.executable, "-m", "tests.bot.bot_child", "--api", double.api_base,
                "--gateway", double.gateway_url, "--token", double.token, "--engine", engine_url,
                "--db", str(db), "--report", str(report),
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            await double.wait_until_connected(60)
            deadline = time.monotonic() + 30
            while not double.registered_commands() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
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
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


async def test_engine_crash_is_reported_and_the_request_survives_the_restart(
    demo_assets: Any, tmp_path: Path
) -> None:
    exits: list[int | None] = []
    engine_process = EngineProcess(
        model_dir=demo_assets.model_root,
        lora_dir=demo_assets.lora_root,
        port=free_port(),
        start_timeout=180,
        on_exit=exits.append,
        token=ENGINE_TOKEN,
    )
    await engine_process.start()
    try:
        async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
            async with EngineClient(engine_process.url, token=ENGINE_TOKEN) as engine:
                guild = double.add_guild("Studio")
                channel = double.add_channel(guild, "studio")
                alice = double.add_member(guild, "alice")
                await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
                bot = make_bot(registry, engine, retry_wait=180)
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
                    assert exits == [-signal.SIGKILL] and engine_process.restarts == 1
                    assert double.violations == []
    finally:
        await engine_process.stop()
    assert not engine_process.running


async def test_deferral_stays_fast_with_hundreds_queued_and_status_edits_are_throttled(world: World) -> None:
    dispatcher = world.bot.dispatcher
    slow = Recipe(model="sd15-tiny.safetensors", prompt="filler", steps=2, width=256, height=256)
    jobs = [
        Job(recipe=slow, guild_id=world.guild.id, channel_id=world.channel.id, user_id=1000 + i, user_name=f"u{i}")
        for i in range(200)
    ]
    await asyncio.gather(*(dispatcher.submit(job, user_limit=2) for job in jobs))
    assert len(dispatcher.waiting) + len(dispatcher.running) == 200

    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "me too"})
    assert await handle.wait_response(3) == 5
    assert handle.deferred_within is not None and handle.deferred_within < 3
    queued = await handle.wait_followup()
    assert "ahead of it" in queued.content

    # The per-user limit applies before anything reaches the engine.
    for _ in range(2):
        extra = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "again"})
        await extra.wait_response(3)
    assert "most this server allows" in (await extra.wait_followup()).content

    for job in [*dispatcher.waiting, *dispatcher.running.values()]:
        await dispatcher.cancel(job.id)
    assert not dispatcher.waiting

    # One job with many progress events: its status message is edited about once per interval.
    dispatcher.status_interval = 2.0
    started = time.monotonic()
    await imagine_and_wait(world, world.bob, {"prompt": "counted", "steps": 12, "count": 2})
    elapsed = time.monotonic() - started
    status = await world.double.wait_for_message(
        world.channel, lambda m: m.content.startswith("✅") and str(world.bob.user.id) in m.content
    )
    assert status.edits <= elapsed / 2.0 + 3, (status.edits, elapsed)
    assert world.double.violations == []


async def test_stopping_the_bot_tells_waiting_members_and_keeps_their_request(world: World) -> None:
    dispatcher = world.bot.dispatcher
    recipe = Recipe(model="sd15-tiny.safetensors", model_name="tiny-sd15", prompt="left behind", steps=30, width=256, height=256)
    jobs = [
        Job(recipe=recipe, guild_id=world.guild.id, channel_id=world.channel.id, user_id=2000 + i, user_name=f"u{i}")
        for i in range(3)
    ]
    for job in jobs:
        await dispatcher.submit(job, user_limit=2)
    await world.bot.close()
    statuses = [m for m in world.double.messages(world.channel) if "left behind" in m.content or "stopped" in m.content]
    assert len(statuses) == 3
    for message in statuses:
        assert "the bot was stopped" in message.content and "/imagine prompt:left behind" in message.content
        assert message.buttons == []
