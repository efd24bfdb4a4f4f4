"""The buttons under a result: Reroll, Remix, Recipe, Save, Delete, and Cancel on a status."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.recipe.a1111 import parse_parameters as parse_a1111_parameters
from sandbox.discord_double import StoredMessage
from tests.bot.conftest import World, make_bot, png_parameters
from tests.bot.test_imagine_flow import imagine_and_wait, is_result


def seed_of(message: StoredMessage) -> str:
    return parse_a1111_parameters(png_parameters(message.attachments[0].data)).params["Seed"]


async def next_result(world: World, after: set[int]) -> StoredMessage:
    return await world.double.wait_for_message(
        world.channel, lambda m: is_result(m) and m.id not in after, within=90
    )


async def recorded(world: World, message: StoredMessage) -> None:
    """Wait until the bot has stored the post: the double shows a message a moment before
    the bot gets Discord's answer to its upload, a gap no human click can hit."""
    for _ in range(100):
        if await world.registry.posts.get(world.guild.id, message.id) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the post {message.id} was never recorded")


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
    assert rerolled.embeds[0]["author"]["url"].endswith(f"/{first.id}")  # links to what it rerolled
    assert f"<@{world.bob.user.id}>" in rerolled.content  # the presser is credited
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
    assert await click.wait_response(3) == 9  # a modal: the member names the recipe
    submitted = await world.double.submit_modal(world.bob, click, {})  # the suggested name, "me"
    assert "Saved" in (await submitted.wait_followup()).content
    saved = await world.registry.saved_recipes.of_member(world.guild.id, world.bob.user.id)
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
    assert await world.registry.posts.get(world.guild.id, first.id) is None
    assert world.double.violations == []


async def test_buttons_on_an_old_message_work_in_a_new_bot_instance(world: World) -> None:
    first = await imagine_and_wait(world, world.alice, {"prompt": "a paper boat", "seed": 99})
    # The status turns to "done" once the post is recorded; then the first process goes away.
    await world.double.wait_for_message(world.channel, lambda m: m.content.startswith("✅"))
    await world.bot.close()

    from sandbox.discord_double import run_bot

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
    await world.double.wait_for_message(world.channel, lambda m: m.id == status.id and "Cancelled" in m.content, within=30)
    assert not any(is_result(m) for m in world.double.messages(world.channel))


async def test_two_members_remix_one_image_and_a_modal_outlives_a_restart(world: World) -> None:
    first = await imagine_and_wait(
        world, world.alice, {"prompt": "a glass lantern", "lora1": "watercolor", "weight1": "0.6", "seed": 5}
    )
    await recorded(world, first)
    # Both open Remix on the same image before either submits: the modals share a custom id.
    alice_click = await world.double.click(world.alice, first, "atelier:img:remix")
    bob_click = await world.double.click(world.bob, first, "atelier:img:remix")
    assert await alice_click.wait_response(3) == 9 and await bob_click.wait_response(3) == 9

    seen = {m.id for m in world.double.messages(world.channel)}
    bob_submit = await world.double.submit_modal(world.bob, bob_click, {"loras": "watercolor:0.2", "seed": "11"})
    alice_submit = await world.double.submit_modal(world.alice, alice_click, {"loras": "watercolor:0.9", "seed": "12"})
    assert await bob_submit.wait_response(3) == 5 and await alice_submit.wait_response(3) == 5
    results = [await next_result(world, seen)]
    results.append(await next_result(world, seen | {results[0].id}))
    made = sorted(png_parameters(r.attachments[0].data) for r in results)
    assert any("<lora:watercolor:0.2>" in p and "Seed: 11" in p for p in made)
    assert any("<lora:watercolor:0.9>" in p and "Seed: 12" in p for p in made)

    # A modal opened before a restart is submitted to the new process.
    late_click = await world.double.click(world.alice, first, "atelier:img:remix")
    assert await late_click.wait_response(3) == 9
    for _ in range(300):  # the remixes' posts are recorded and their statuses final
        if not world.bot.dispatcher.jobs:
            break
        await asyncio.sleep(0.1)
    await world.bot.close()

    from sandbox.discord_double import run_bot

    fresh = make_bot(world.registry, world.engine)
    async with run_bot(fresh, world.double):
        seen = {m.id for m in world.double.messages(world.channel)}
        late_submit = await world.double.submit_modal(world.alice, late_click, {"seed": "13"})
        assert await late_submit.wait_response(3) == 5
        late = await next_result(world, seen)
        assert "Seed: 13" in png_parameters(late.attachments[0].data)
    assert world.double.violations == []


async def test_remix_with_a_seed_that_is_not_a_number_is_explained(world: World) -> None:
    first = await imagine_and_wait(world, world.alice, {"prompt": "a tin robot", "seed": 3})
    await recorded(world, first)
    seen = {m.id for m in world.double.messages(world.channel)}
    # "²" passes str.isdigit() but int() refuses it; this used to crash the submit.
    for seed in ("²", "12a", "-4"):
        click = await world.double.click(world.alice, first, "atelier:img:remix")
        assert await click.wait_response(3) == 9, click.response_payloads
        submitted = await world.double.submit_modal(world.alice, click, {"seed": seed})
        assert await submitted.wait_response(3) == 5
        reply = await submitted.wait_followup()
        assert reply.ephemeral and "is not a whole number" in reply.content and seed in reply.content
    assert not any(m.id not in seen and is_result(m) for m in world.double.messages(world.channel))
    assert world.double.violations == []


async def test_saved_recipes_can_be_listed_run_again_and_deleted(world: World) -> None:
    first = await imagine_and_wait(
        world, world.alice, {"prompt": "a moth on a lamp", "lora1": "watercolor", "weight1": "0.5", "seed": 21}
    )
    await recorded(world, first)
    click = await world.double.click(world.alice, first, "atelier:img:save")
    assert await click.wait_response(3) == 9
    submitted = await world.double.submit_modal(world.alice, click, {})
    assert "Saved" in (await submitted.wait_followup()).content
    (saved,) = await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id)

    async def recipes(user: Any, subcommand: str, options: dict[str, Any] | None = None) -> Any:
        # A member's own recipes are /recipe's "mine" scope (there was a separate /recipes).
        handle = await world.double.slash(user, world.channel, "recipe", {"scope": "mine", **(options or {})}, subcommand=subcommand)
        assert await handle.wait_response(3) == 5
        return await handle.wait_followup()

    listed = await recipes(world.alice, "list")
    assert listed.ephemeral and saved.name in str(listed.embeds) and "lora1:watercolor weight1:0.5" in str(listed.embeds)
    assert saved.name not in str((await recipes(world.bob, "list")).embeds)  # per member
    choices = await world.double.autocomplete(world.alice, world.channel, "recipe", {"scope": "mine", "name": "moth"}, "name", subcommand="use")
    assert [c["value"] for c in choices] == [saved.name]

    seen = {m.id for m in world.double.messages(world.channel)}
    assert "Queued" in (await recipes(world.alice, "use", {"name": saved.name})).content
    again = await next_result(world, seen)
    parameters = png_parameters(again.attachments[0].data)
    assert "Seed: 21" in parameters and "<lora:watercolor:0.5>" in parameters

    assert "is not a saved recipe in your recipes" in (await recipes(world.bob, "use", {"name": saved.name})).content
    assert "Deleted" in (await recipes(world.alice, "delete", {"name": saved.name})).content
    assert await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id) == []
    assert world.double.violations == []


async def test_remix_keeps_a_prompt_longer_than_a_modal_input(world: World) -> None:
    prompt = "a lighthouse in the fog, " * 163  # 4,075 characters: within the server's 4,096
    first = await imagine_and_wait(world, world.alice, {"prompt": prompt.strip(), "seed": 8})
    await recorded(world, first)
    click = await world.double.click(world.alice, first, "atelier:img:remix")
    assert await click.wait_response(3) == 9
    seen = {m.id for m in world.double.messages(world.channel)}
    submitted = await world.double.submit_modal(world.alice, click, {"seed": "9"})
    assert await submitted.wait_response(3) == 5
    remixed = await next_result(world, seen)
    await recorded(world, remixed)
    post = await world.registry.posts.get(world.guild.id, remixed.id)
    assert post is not None and post.recipe["seed"] == 9 and post.recipe["prompt"] == prompt.strip()
    assert world.double.violations == []
