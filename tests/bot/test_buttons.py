"""The buttons under a result: Reroll, Remix, Recipe, Save, Delete, and Cancel on a status."""

from __future__ import annotations

from bot.sandbox import StoredMessage
from engine.png_metadata import parse_a1111_parameters
from tests.bot.conftest import World, make_bot, png_parameters
from tests.bot.test_imagine_flow import imagine_and_wait, is_result


def seed_of(message: StoredMessage) -> str:
    return parse_a1111_parameters(png_parameters(message.attachments[0].data)).params["Seed"]


async def next_result(world: World, after: set[int]) -> StoredMessage:
    return await world.double.wait_for_message(
        world.channel, lambda m: is_result(m) and m.id not in after, within=90
    )


async def test_reroll_remix_recipe_save_and_delete(world: World) -> None:
    first = await imagine_and_wait(
        world, world.alice, {"prompt": "a red kite", "lora1": "watercolor", "weight1": "0.6", "seed": 7}
    )
    assert seed_of(first) == "7"

    # Reroll: a new channel message, same recipe, another seed.
    seen = {m.id for m in world.double.messages(world.channel)}
    click = await world.double.click(world.bob, first, "atelier:img:reroll")
    assert await click.wait_response(3) == 5
    rerolled = await next_result(world, seen)
    assert seed_of(rerolled) != "7"
    assert "<lora:watercolor:0.6>" in png_parameters(rerolled.attachments[0].data)

    # Remix: a modal prefilled with the recipe; changing the weight changes the image's recipe.
    click = await world.double.click(world.alice, first, "atelier:img:remix")
    assert await click.wait_response(3) == 9
    modal = click.modal
    assert modal is not None and len(modal["components"]) <= 5 and len(modal["title"]) <= 45
    prefilled = {
        row["components"][0]["custom_id"]: row["components"][0].get("value") for row in modal["components"]
    }
    assert prefilled["loras"] == "watercolor:0.6"
    assert prefilled["seed"] == "7" and prefilled["steps"] == "2"
    assert prefilled["prompt"].startswith("a red kite")
    seen = {m.id for m in world.double.messages(world.channel)}
    submitted = await world.double.submit_modal(world.alice, click, {"loras": "watercolor:0.3"})
    assert await submitted.wait_response(3) == 5
    remixed = await next_result(world, seen)
    parameters = png_parameters(remixed.attachments[0].data)
    assert "<lora:watercolor:0.3>" in parameters and "Seed: 7" in parameters

    # Recipe: ephemeral, with a copyable /imagine line and the PNG's A1111 text.
    click = await world.double.click(world.bob, first, "atelier:img:recipe")
    reply = await click.wait_followup()
    assert reply.ephemeral
    assert "/imagine prompt:a red kite" in reply.content and "lora1:watercolor weight1:0.6" in reply.content
    assert "Steps: 2" in reply.content and "Seed: 7" in reply.content

    # Save recipe: stored for the clicking member.
    click = await world.double.click(world.bob, first, "atelier:img:save")
    assert "Saved" in (await click.wait_followup()).content
    saved = await world.registry.saved_recipes(world.guild.id, world.bob.user.id)
    assert [s.recipe["seed"] for s in saved] == [7]

    # Delete: refused for someone else, allowed for a moderator and for the requester.
    click = await world.double.click(world.bob, first, "atelier:img:delete")
    refusal = await click.wait_followup()
    assert refusal.ephemeral and "Manage Messages" in refusal.content
    assert not first.deleted
    click = await world.double.click(world.moderator, rerolled, "atelier:img:delete")
    await click.wait_followup()
    assert rerolled.deleted
    click = await world.double.click(world.alice, first, "atelier:img:delete")
    await click.wait_followup()
    assert first.deleted
    assert await world.registry.get_post(world.guild.id, first.id) is None
    assert world.double.violations == []


async def test_buttons_on_an_old_message_work_in_a_new_bot_instance(world: World) -> None:
    first = await imagine_and_wait(world, world.alice, {"prompt": "a paper boat", "seed": 99})
    # The status turns to "done" once the post is recorded; then the first process goes away.
    await world.double.wait_for_message(world.channel, lambda m: m.content.startswith("✅"))
    await world.bot.close()

    from bot.sandbox import run_bot

    fresh = make_bot(world.registry, world.engine)
    async with run_bot(fresh, world.double):
        click = await world.double.click(world.alice, first, "atelier:img:recipe")
        reply = await click.wait_followup()
        assert reply.ephemeral and "Seed: 99" in reply.content
        seen = {m.id for m in world.double.messages(world.channel)}
        click = await world.double.click(world.alice, first, "atelier:img:reroll")
        assert await click.wait_response(3) == 5
        rerolled = await next_result(world, seen)
        assert "a paper boat" in png_parameters(rerolled.attachments[0].data)
    assert world.double.violations == []


async def test_cancel_button_only_for_requester_or_moderator(world: World) -> None:
    # A long job (many steps) so there is time to press Cancel while it waits or runs.
    handle = await world.double.slash(
        world.alice, world.channel, "imagine", {"prompt": "a slow one", "model": "tiny-sd15", "steps": 50, "count": 4}
    )
    await handle.wait_response(3)
    status = await world.double.wait_for_message(
        world.channel, lambda m: any(b.custom_id.startswith("atelier:cancel:") for b in m.buttons)
    )
    (cancel_id,) = [b.custom_id for b in status.buttons]
    assert len(cancel_id) <= 100
    click = await world.double.click(world.bob, status, cancel_id)
    assert "Manage Messages" in (await click.wait_response(3) and click.response_payloads[-1]["data"]["content"])
    click = await world.double.click(world.alice, status, cancel_id)
    await click.wait_followup()
    await world.double.wait_for_message(world.channel, lambda m: m.id == status.id and "cancelled" in m.content, within=30)
    assert not any(is_result(m) for m in world.double.messages(world.channel))
