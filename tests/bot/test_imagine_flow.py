"""/imagine end to end: Discord wire in, a real engine render, a PNG with its recipe out."""

from __future__ import annotations

import re
from typing import Any

from bot.ui.embeds import EMBED_TOTAL_LIMIT, FIELD_VALUE_LIMIT
from sandbox.discord_double import Member, StoredMessage
from tests.bot.conftest import FAST, SD15, World, embed_total, png_parameters


def is_result(message: StoredMessage) -> bool:
    return bool(message.attachments) and not message.ephemeral


async def imagine_and_wait(world: World, user: Member, options: dict[str, Any]) -> StoredMessage:
    before = {m.id for m in world.double.messages(world.channel)}
    handle = await world.double.slash(user, world.channel, "imagine", {**FAST, **options})
    assert await handle.wait_response(3) == 5
    return await world.double.wait_for_message(
        world.channel,
        lambda m: is_result(m) and m.id not in before and f"<@{user.user.id}>" in m.content,
        within=90,
    )


async def test_two_lora_stack_posts_png_with_recipe_and_embed(world: World) -> None:
    handle = await world.double.slash(
        world.alice,
        world.channel,
        "imagine",
        {
            **FAST,
            "prompt": "a lighthouse at dusk",
            "lora1": "watercolor",
            "weight1": "0.8",
            "lora2": "pixel-art",
            "weight2": ".5",
            "seed": 1234,
        },
    )
    assert await handle.wait_response(3) == 5  # deferred, "thinking…"
    assert handle.deferred_within is not None and handle.deferred_within < 3
    queued = await handle.wait_followup()
    assert queued.ephemeral and "Queued" in queued.content

    result = await world.double.wait_for_message(world.channel, is_result, within=90)
    assert result.interaction is None  # a channel message, not the interaction token's
    assert len(result.attachments) == 1
    png = result.attachments[0]
    assert png.data.startswith(b"\x89PNG")
    parameters = png_parameters(png.data)
    assert "<lora:watercolor:0.8>" in parameters
    assert "<lora:pixel-art:0.5>" in parameters
    assert "Seed: 1234" in parameters
    assert "Steps: 2" in parameters

    (embed,) = result.embeds
    assert embed_total(embed) <= EMBED_TOTAL_LIMIT
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert all(len(v) <= FIELD_VALUE_LIMIT for v in fields.values())
    assert fields["Model"] == SD15
    assert fields["Seed"] == "1234"
    assert fields["Steps"] == "2"
    assert fields["Size"] == "256×256"
    assert "`watercolor` × 0.8" in fields["LoRAs (2)"] and "`pixel-art` × 0.5" in fields["LoRAs (2)"]
    assert re.search(r"\d+\.\d s", embed["footer"]["text"])  # time taken

    ids = [b.custom_id for b in result.buttons]
    assert ids == [
        "atelier:img:reroll", "atelier:img:remix", "atelier:img:recipe", "atelier:img:save", "atelier:img:share",
        "atelier:img:delete",
        # Issue 20: Vary (subtle), Vary (strong) and Upscale x2 on every result.
        "atelier:pic:vary_subtle", "atelier:pic:vary_strong", "atelier:pic:upscale",
    ]  # fmt: skip
    assert all(len(i) <= 100 for i in ids)

    status = await world.double.wait_for_message(world.channel, lambda m: m.content.startswith("✅"))
    assert result.id and str(result.id) in status.content  # links to the result
    assert status.buttons == []  # Cancel removed once finished
    assert world.double.violations == []
    # The registry remembers the post (buttons survive restarts) and counts LoRA uses.
    post = await world.registry.posts.get(world.guild.id, result.id)
    assert post is not None and post.recipe["seed"] == 1234
    assert (await world.registry.loras.get(world.guild.id, "watercolor")).uses == 1


async def test_validation_problems_come_back_together_in_one_ephemeral_message(world: World) -> None:
    handle = await world.double.slash(
        world.alice,
        world.channel,
        "imagine",
        {
            **FAST,
            "prompt": "a fox",
            "lora1": "watercolr",  # typo
            "lora2": "pixel-art-xl",  # SDXL LoRA on an SD 1.5 model
            "lora3": "captain-nova",
            "weight3": "0.7.1",  # malformed weight
        },
    )
    assert await handle.wait_response(3) == 5
    reply = await handle.wait_followup()
    assert reply.ephemeral
    text = reply.content
    assert len(text) <= 2000
    assert "watercolr" in text and "`watercolor`" in text  # did you mean
    assert "0.7.1" in text
    assert "sdxl" in text.lower() and ("sd15" in text.lower() or "sd 1.5" in text.lower())  # both architectures named
    assert len(handle.followups) == 1
    assert not any(is_result(m) for m in world.double.messages(world.channel))
    assert not any(m.content.startswith("⏳") for m in world.double.messages(world.channel))
