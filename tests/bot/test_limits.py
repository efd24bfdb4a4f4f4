"""Upload limits and expired tokens: the result still reaches the channel, within limits."""

from __future__ import annotations

from typing import Any

from bot.registry import Registry
from bot.sandbox import DiscordDouble, run_bot
from engine.client import EngineClient
from tests.bot.conftest import FAST, make_bot, png_parameters, seed_registry
from tests.bot.test_imagine_flow import is_result


async def test_small_upload_limit_and_expired_token_still_deliver_the_image(
    engine_url: str, demo_assets: Any, tmp_path
) -> None:
    limit = 24 * 1024  # a 256² render of the tiny model is larger than this
    async with DiscordDouble() as double, await Registry.open(tmp_path / "a.sqlite3") as registry:
        async with EngineClient(engine_url) as engine:
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
                assert double.violations == []
