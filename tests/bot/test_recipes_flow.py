"""Recipes shared in channels, end to end through the Discord double and a real engine:
generate, share, another member uses the card, save under a chosen name, use it by name,
and remix an image made by another tool from the message context menu."""

from __future__ import annotations

import json

import pytest

from engine.recipe.readers import read_image
from sandbox.discord_double import StoredMessage
from tests.bot.conftest import World, png_parameters
from tests.bot.test_buttons import next_result, recorded
from tests.bot.test_imagine_flow import imagine_and_wait
from tests.recipe import images


def card_in(world: World, seen: set[int]) -> StoredMessage | None:
    for message in world.double.messages(world.channel):
        if message.id not in seen and not message.ephemeral and any(
            (b.custom_id or "").startswith("atelier:card:use:") for b in message.buttons
        ):
            return message
    return None


def button(message: StoredMessage, action: str) -> str:
    return next(b.custom_id for b in message.buttons if (b.custom_id or "").startswith(f"atelier:card:{action}:"))


async def test_share_use_save_and_use_by_name(world: World) -> None:
    double = world.double
    first = await imagine_and_wait(world, world.alice, {"prompt": "a red kite over fog", "lora1": "watercolor", "weight1": "0.6", "seed": 7})
    await recorded(world, first)

    # The Recipe button and the PNG now say the same, LoRA hash included (they had drifted).
    click = await double.click(world.bob, first, "atelier:img:recipe")
    reply = await click.wait_followup()
    assert png_parameters(first.attachments[0].data) in reply.content and "Lora hashes" in reply.content

    # Bob shares Alice's image: a card in the channel, crediting both.
    seen = {m.id for m in double.messages(world.channel)}
    click = await double.click(world.bob, first, "atelier:img:share")
    assert "Shared" in (await click.wait_followup()).content
    card = card_in(world, seen)
    assert card is not None and card.author is double.bot_user
    (embed,) = card.embeds
    assert f"<@{world.alice.user.id}>" in embed["description"] and f"<@{world.bob.user.id}>" in embed["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert "`watercolor` × 0.6" in fields["LoRAs (1)"] and "/imagine recipe:AT1." in fields["Make it yourself"]
    assert embed["url"].endswith(f"/{first.id}")

    # The moderator uses the card with the same seed: their image, linked to Alice's.
    seen = {m.id for m in double.messages(world.channel)}
    click = await double.click(world.moderator, card, button(card, "same"))
    assert await click.wait_response(3) == 5
    used = await next_result(world, seen)
    assert f"<@{world.moderator.user.id}>" in used.content  # the presser is credited
    assert "Seed: 7" in png_parameters(used.attachments[0].data)
    assert used.embeds[0]["author"]["url"].endswith(f"/{first.id}")
    await recorded(world, used)
    lineage = await world.registry.book.lineage(world.guild.id, used.id)
    assert lineage is not None and lineage.origin == "recipe card" and lineage.parent_message_id == first.id

    # Save from the card under a chosen name; the name is the server's now.
    click = await double.click(world.bob, card, button(card, "save"))
    assert await click.wait_response(3) == 9
    prefilled = {row["components"][0]["custom_id"]: row["components"][0].get("value") for row in click.modal["components"]}
    assert prefilled["scope"] == "server" and prefilled["name"].endswith("#7")
    submitted = await double.submit_modal(world.bob, click, {"name": "Foggy kite"})
    assert "recipe book as **Foggy kite**" in (await submitted.wait_followup()).content
    again = await double.click(world.alice, card, button(card, "save"))
    assert await again.wait_response(3) == 9
    submitted = await double.submit_modal(world.alice, again, {"name": "foggy  KITE"})
    assert "already has **Foggy kite**" in (await submitted.wait_followup()).content

    async def recipe(user, sub: str, options: dict) -> StoredMessage:
        handle = await double.slash(user, world.channel, "recipe", options, subcommand=sub)
        assert await handle.wait_response(3) == 5
        return await handle.wait_followup()

    listed = await recipe(world.alice, "list", {"lora": "watercolor"})
    assert "Foggy kite" in listed.embeds[0]["description"]
    assert "No recipes" in (await recipe(world.alice, "list", {"model": "tiny-sdxl"})).embeds[0]["description"]
    choices = await double.autocomplete(world.alice, world.channel, "recipe", {"name": "fog"}, "name", subcommand="use")
    assert [c["value"] for c in choices] == ["Foggy kite"]

    seen = {m.id for m in double.messages(world.channel)}
    assert "Queued" in (await recipe(world.alice, "use", {"name": "foggy kite", "weights": "watercolor:0.3", "seed": 11})).content
    made = await next_result(world, seen)
    parameters = png_parameters(made.attachments[0].data)
    assert "<lora:watercolor:0.3>" in parameters and "Seed: 11" in parameters
    assert (await world.registry.book.get(world.guild.id, "Foggy kite")).uses == 1

    # Only its author or an admin may delete it.
    assert "Only" in (await recipe(world.alice, "delete", {"name": "Foggy kite"})).content
    assert "Deleted" in (await recipe(world.bob, "delete", {"name": "Foggy kite"})).content
    assert world.double.violations == []


async def test_remix_an_image_made_by_comfyui_from_the_context_menu(world: World) -> None:
    double = world.double
    graph = json.loads(json.dumps(images.COMFY_GRAPH))
    graph["11"]["inputs"]["strength_model"] = 0.5  # the server allows weights 0-2
    graph["4"]["inputs"]["ckpt_name"] = "unknown-model.safetensors"
    data = images.comfy_png(graph)
    posted = await double.send_user_message(world.bob, world.channel, "made this in ComfyUI", files=[("fox.png", data)])

    handle = await double.message_command(world.alice, posted, "Remix this image")
    assert await handle.wait_response(3) == 5
    reply = await handle.wait_followup()
    assert reply.ephemeral and "ComfyUI" in reply.embeds[0]["title"]
    text = json.dumps(reply.embeds)
    assert "unknown-model" in text and "/model add" in text  # what could not be matched, and what to do
    assert "LoRA `watercolor` (by file name)" in text or "LoRA `watercolor` (by name)" in text
    assert double.proxy_fetches == []  # the original file, never the WebP preview

    seen = {m.id for m in double.messages(world.channel)}
    click = await double.click(world.alice, reply, next(b.custom_id for b in reply.buttons if ":remix:" in (b.custom_id or "")))
    assert await click.wait_response(3) == 9
    prefilled = {row["components"][0]["custom_id"]: row["components"][0].get("value") for row in click.modal["components"]}
    assert prefilled["prompt"] == "a fox in snow, goodhands" and prefilled["loras"] == "watercolor:0.6\npixel-art:0.5"
    submitted = await double.submit_modal(world.alice, click, {"seed": "5"})
    assert await submitted.wait_response(3) == 5
    made = await next_result(world, seen)
    parameters = png_parameters(made.attachments[0].data)
    assert "Seed: 5" in parameters and "<lora:watercolor:0.6>" in parameters
    assert made.embeds[0]["author"]["url"].endswith(f"/{posted.id}")  # links to Bob's message
    await recorded(world, made)
    post = await world.registry.posts.get(world.guild.id, made.id)
    assert post.recipe["clip_skip"] == 2  # carried in the recipe (issue 9 applies it in the engine)

    # Our own result, read from the menu, comes from the database (exact).
    handle = await double.message_command(world.bob, made, "Remix this image")
    reply = await handle.wait_followup()
    assert "made here" in reply.embeds[0]["title"]
    found = read_image(made.attachments[0].data).found
    assert found is not None and found.exact

    nothing = await double.send_user_message(world.bob, world.channel, "a photo", files=[("photo.png", images.png())])
    handle = await double.message_command(world.alice, nothing, "Remix this image")
    assert "no recipe found" in (await handle.wait_followup()).content
    assert double.violations == []


async def test_recipe_read_an_attachment_and_long_recipes_come_whole(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "recipe", {"image": ("kite.png", images.png({"parameters": images.CIVITAI_TEXT}))}, subcommand="read")
    reply = await handle.wait_followup()
    assert "Civitai" in reply.embeds[0]["title"] and "Tiny SDXL" in json.dumps(reply.embeds)
    posted = await double.send_user_message(world.bob, world.channel, "look", files=[("swarm.png", images.png({"parameters": json.dumps(images.SWARM)}))])
    link = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/{posted.id}"
    handle = await double.slash(world.alice, world.channel, "recipe", {"link": link}, subcommand="read")
    reply = await handle.wait_followup()
    assert "SwarmUI" in reply.embeds[0]["title"] and "model `tiny-sdxl` (by name)" in json.dumps(reply.embeds)
    handle = await double.slash(world.alice, world.channel, "recipe", {"link": "https://discord.com/channels/1/2/3"}, subcommand="read")
    assert "not a link to a message in this server" in (await handle.wait_followup()).content

    prompt = "a lighthouse in the fog, " * 160
    first = await imagine_and_wait(world, world.alice, {"prompt": prompt.strip(), "seed": 3})
    await recorded(world, first)
    click = await double.click(world.alice, first, "atelier:img:recipe")
    reply = await click.wait_followup()
    (attachment,) = reply.attachments
    whole = attachment.data.decode()
    assert prompt.strip() in whole and "Steps: 2" in whole and "/imagine recipe:AT1." in whole

    # The share code from the card runs the same recipe in /imagine.
    from engine.recipe import share_code

    post = await world.registry.posts.get(world.guild.id, first.id)
    from engine.protocol import Recipe

    code = share_code.encode(Recipe.from_json(post.recipe))
    seen = {m.id for m in double.messages(world.channel)}
    handle = await double.slash(world.bob, world.channel, "imagine", {"recipe": code, "seed": 4})
    assert "Queued" in (await handle.wait_followup()).content
    made = await next_result(world, seen)
    assert "Seed: 4" in png_parameters(made.attachments[0].data)
    handle = await double.slash(world.bob, world.channel, "imagine", {"recipe": "AT1.nonsense"})
    assert "can't be read" in (await handle.wait_followup()).content
    assert double.violations == []


async def test_one_recipe_command_with_mine_and_server_scopes(world: World) -> None:
    """Issue 16: /recipes (a member's own) and /recipe (the server's book) are one /recipe
    group; where a recipe lives is its scope. What members saved before keeps working."""
    double = world.double
    # Saved the way the 💾 button (and the old /recipes) stored it, before this change.
    old = await imagine_and_wait(world, world.alice, {"prompt": "an old lantern", "seed": 4})
    await recorded(world, old)
    old_post = await world.registry.posts.get(world.guild.id, old.id)
    await world.registry.saved_recipes.save(world.guild.id, world.alice.user.id, "Lantern", old_post.recipe)

    with pytest.raises(LookupError, match="/recipes is not registered"):
        await double.slash(world.alice, world.channel, "recipes", {}, subcommand="list")
    (registered,) = [c for c in double.registered_commands(world.guild) + double.registered_commands() if c["name"] == "recipe"]
    subcommands = {o["name"]: o for o in registered["options"]}
    assert set(subcommands) == {"share", "save", "list", "show", "use", "delete", "read"}
    for verb in ("share", "save", "list", "show", "use", "delete"):
        (scope,) = [o for o in subcommands[verb]["options"] if o["name"] == "scope"]
        assert [c["value"] for c in scope["choices"]] == ["mine", "server"]

    async def recipe(user, sub: str, options: dict) -> StoredMessage:
        handle = await double.slash(user, world.channel, "recipe", options, subcommand=sub)
        assert await handle.wait_response(3) == 5
        return await handle.wait_followup()

    first = await imagine_and_wait(world, world.alice, {"prompt": "a moth at dusk", "lora1": "watercolor", "weight1": "0.5", "seed": 21})
    await recorded(world, first)
    # save keeps it for the member unless told scope:server; the answer says where it went.
    assert "in your recipes" in (await recipe(world.alice, "save", {"name": "Dusk"})).content
    assert [s.name for s in await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id)] == ["Dusk", "Lantern"]
    assert await world.registry.book.get(world.guild.id, "Dusk") is None
    assert "server's recipe book as **Dusk**" in (await recipe(world.alice, "save", {"name": "Dusk", "scope": "server"})).content
    assert (await world.registry.book.get(world.guild.id, "Dusk")).author_id == world.alice.user.id

    # list without a scope shows both, labelled; each member sees only their own.
    listed = await recipe(world.alice, "list", {})
    book, mine = listed.embeds
    assert "recipe book" in book["title"] and "**Dusk**" in book["description"] and "Lantern" not in book["description"]
    assert "Your recipes" in mine["title"] and "**Dusk**" in mine["description"] and "**Lantern**" in mine["description"]
    assert "lora1:watercolor weight1:0.5" in mine["description"]
    (only_mine,) = (await recipe(world.alice, "list", {"scope": "mine", "lora": "watercolor"})).embeds
    assert "**Dusk**" in only_mine["description"] and "Lantern" not in only_mine["description"]
    bob_book, bob_mine = (await recipe(world.bob, "list", {})).embeds
    assert "**Dusk**" in bob_book["description"] and "Dusk" not in bob_mine["description"]

    # Autocomplete follows the scope chosen; without one it offers both, labelled.
    choices = await double.autocomplete(world.alice, world.channel, "recipe", {"name": "d"}, "name", subcommand="use")
    assert [(c["name"], c["value"]) for c in choices] == [("Dusk · yours", "Dusk"), ("Dusk · server's book", "Dusk")]
    choices = await double.autocomplete(world.alice, world.channel, "recipe", {"scope": "mine", "name": "an"}, "name", subcommand="use")
    assert [c["value"] for c in choices] == ["Lantern"]
    choices = await double.autocomplete(world.alice, world.channel, "recipe", {"scope": "server", "name": "an"}, "name", subcommand="delete")
    assert choices == []

    # A name in both stores: the member is asked which; with a scope it runs.
    assert "say which with `scope:mine` or `scope:server`" in (await recipe(world.alice, "use", {"name": "dusk"})).content
    seen = {m.id for m in double.messages(world.channel)}
    assert "Queued" in (await recipe(world.alice, "use", {"name": "dusk", "scope": "mine", "seed": 9})).content
    made = await next_result(world, seen)
    assert "Seed: 9" in png_parameters(made.attachments[0].data) and "<lora:watercolor:0.5>" in png_parameters(made.attachments[0].data)
    assert (await world.registry.book.get(world.guild.id, "Dusk")).uses == 0  # the book's entry was not the one used
    # A recipe saved before the change runs by name alone (it is only in Alice's recipes).
    seen = {m.id for m in double.messages(world.channel)}
    assert "Queued" in (await recipe(world.alice, "use", {"name": "Lantern"})).content
    assert "Seed: 4" in png_parameters((await next_result(world, seen)).attachments[0].data)
    assert "not a saved recipe in your recipes" in (await recipe(world.bob, "use", {"name": "Lantern", "scope": "mine"})).content

    # show and share find a member's own recipe too; save with a name copies it into the book.
    shown = await recipe(world.alice, "show", {"name": "lantern"})
    assert shown.embeds[0]["title"] == "🔒 Lantern (your recipe)" and "an old lantern" in json.dumps(shown.embeds)
    seen = {m.id for m in double.messages(world.channel)}
    assert "Shared" in (await recipe(world.alice, "share", {"source": "Lantern", "scope": "mine"})).content
    card = card_in(world, seen)
    assert card is not None and "an old lantern" in json.dumps(card.embeds)
    copied = await recipe(world.alice, "save", {"name": "Lantern for all", "source": "Lantern", "scope": "server"})
    assert "recipe book as **Lantern for all**" in copied.content
    assert (await world.registry.book.get(world.guild.id, "Lantern for all")).recipe["seed"] == 4

    # Delete with a scope removes only that one; the other is then found without one.
    assert "from your recipes" in (await recipe(world.alice, "delete", {"name": "Dusk", "scope": "mine"})).content
    assert [s.name for s in await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id)] == ["Lantern"]
    assert "Only" in (await recipe(world.bob, "delete", {"name": "Dusk"})).content
    assert "from the recipe book" in (await recipe(world.alice, "delete", {"name": "Dusk"})).content
    assert await world.registry.book.get(world.guild.id, "Dusk") is None
    assert double.violations == []


async def test_recipe_list_of_both_full_pages_fits_one_message(world: World) -> None:
    """Two full pages (the book's and the member's own) share Discord's 6000 characters."""
    first = await imagine_and_wait(world, world.alice, {"prompt": "a kite", "lora1": "watercolor", "weight1": "0.5", "seed": 1})
    await recorded(world, first)
    post = await world.registry.posts.get(world.guild.id, first.id)
    stack = [{**post.recipe["loras"][0], "name": f"a-lora-with-a-rather-long-name-{i}"} for i in range(8)]
    long = {**post.recipe, "prompt": "a very long prompt about kites and fog, " * 40, "loras": stack}
    for i in range(12):
        name = f"kite recipe with a long name number {i:02d} " + "x" * 20
        await world.registry.saved_recipes.save(world.guild.id, world.alice.user.id, name, long)
        await world.registry.book.save(world.guild.id, world.alice.user.id, name, long, model_name="tiny-sdxl", lora_names=["watercolor"])
    handle = await world.double.slash(world.alice, world.channel, "recipe", {}, subcommand="list")
    listed = await handle.wait_followup()
    book, mine = listed.embeds
    assert "page 1/2" in book["title"] and "page 1/2" in mine["title"]
    assert "number 11" in book["description"] and "number 11" in mine["description"]  # newest first
    assert mine["description"].endswith("…")  # cut to the room the book's page left
    assert sum(len(e["title"]) + len(e["description"]) + len((e.get("footer") or {}).get("text", "")) for e in listed.embeds) <= 6000
    assert world.double.violations == []
