"""Upload limits and expired tokens: the result still reaches the channel, within limits."""

from __future__ import annotations

from typing import Any

from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import DiscordDouble, run_bot
from tests.bot.conftest import FAST, make_bot, png_parameters, seed_registry
from tests.bot.test_imagine_flow import is_result
from tests.conftest import ENGINE_TOKEN


async def test_small_upload_limit_and_expired_token_still_deliver_the_image(
    engine_url: str, demo_assets: Any, tmp_path
) -> None:
    limit = 24 * 1024  # a 256² render of the tiny model is larger than this
    async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
        async with EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            guild = double.add_guild("Small", attachment_size_limit=limit)
            channel = double.add_channel(guild, "studio")
            alice = double.add_member(guild, "alice")
            await seed_registry(registry, guild.id, engine, demo_assets, guild.owner_id)
            async with run_bot(make_bot(registry, engine), double):
                handle = await double.slash(
                    alice, channel, "imagine", {**FAST, "prompt": "noise and texture", "lora1": "pixel-art", "seed": 3}
                )
                assert await handle.wait_response(3) == 5
                await handle.wait_followup()
                double.expire_token(handle)  # the queue outlived the interaction's 15 minutes
                result = await double.wait_for_message(channel, is_result, within=90)
                png = result.attachments[0]
                assert png.size <= limit
                assert "Seed: 3" in png_parameters(png.data)  # the recipe survives re-encoding
                notes = next(f["value"] for f in result.embeds[0]["fields"] if f["name"] == "Notes")
                assert "scaled down" in notes
                # The double expired the token behind the bot's back: the bot may learn it from
                # one refused edit of its private reply, and must stop using the token then.
                assert [v.kind for v in double.violations] in ([], ["interaction_token_expired"])


async def test_python_m_bot_entry_point_runs_against_the_double(engine_url: str, tmp_path) -> None:
    """``run()`` is what ``DISCORD_TOKEN=... python -m bot`` calls: config, data folder, sync."""
    import asyncio

    from bot.__main__ import run
    from sandbox.discord_double import patch_discord_endpoints

    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        stop = asyncio.Event()
        env = {
            "DISCORD_TOKEN": double.token,
            "ATELIER_DATA_DIR": str(tmp_path / "data"),
            "ATELIER_ENGINE_URL": engine_url,
            "ATELIER_ENGINE_TOKEN": ENGINE_TOKEN,
            "ATELIER_SYNC_GUILDS": str(guild.id),
        }
        with patch_discord_endpoints(double):
            task = asyncio.create_task(run(env=env, stop=stop))
            await double.wait_until_connected(30)
            for _ in range(300):
                if double.registered_commands(guild) or task.done():
                    break
                await asyncio.sleep(0.05)
            assert {c["name"] for c in double.registered_commands(guild)} >= {"imagine", "lora", "settings"}
            handle = await double.slash(alice, channel, "model", subcommand="list")
            assert await handle.wait_response(3) == 5
            assert "No models yet" in str((await handle.wait_followup()).embeds)
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
        assert (tmp_path / "data" / "atelier.sqlite3").exists()


async def test_engine_that_cannot_start_is_reported_with_its_own_words(tmp_path) -> None:
    import pytest

    from bot.engine_link.process import EngineProcess, EngineStartError

    process = EngineProcess(model_dir=tmp_path / "missing", lora_dir=tmp_path, port=1, start_timeout=30)
    with pytest.raises(EngineStartError, match="models folder .* does not exist"):
        await process.start()
    assert not process.running
    await process.stop()
