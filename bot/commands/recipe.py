"""``/recipe``: the server recipe book and sharing; and the "Remix this image" message command.

``/recipes`` (plural) keeps each member's own saved recipes; ``/recipe`` is what a server
shares: ``share`` posts a recipe card in the channel, ``save`` names a recipe in the book
(names are unique per server), ``list`` browses it (newest or most used, by model, LoRA or
author), ``show`` and ``use`` open and run one, ``delete`` removes one (its author or an
admin), ``read`` reads the recipe of any image (an attachment or a message link).
"""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands

from bot.commands.common import bot_of, send_private

recipe = app_commands.Group(name="recipe", description="The server's recipe book: share, save, browse and read recipes", guild_only=True)


async def book_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    names = await bot_of(interaction).registry.book.names(interaction.guild_id, current)
    return [app_commands.Choice(name=n, value=n) for n in names[:25] if len(n) <= 100]


@recipe.command(name="share", description="Post a recipe card in this channel")
@app_commands.describe(source="A recipe book name, a recipe code (AT1.…) or a link to an image made here")
@app_commands.autocomplete(source=book_autocomplete)
async def recipe_share(interaction: discord.Interaction[Any], source: app_commands.Range[str, 1, 6000]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = bot_of(interaction)
    found = await bot.recipes.recipe_from(interaction, source)
    if found is None:
        return
    recipe_, author, message_id = found
    entry = await bot.registry.book.get(interaction.guild_id, source) if interaction.guild_id else None
    posted = await bot.recipes.post_card(
        interaction, recipe_, author_id=author, source="book" if entry else "code", source_message_id=message_id,
        source_channel_id=None, book_name=entry.name if entry else None,
    )  # fmt: skip
    if posted is not None:
        await send_private(interaction, f"Shared: {posted.jump_url}")


@recipe.command(name="save", description="Save a recipe in this server's book under a name you choose")
@app_commands.describe(
    name="A name nobody here has used (letters, digits, spaces, - or _)",
    source="A link to an image or card, or a recipe code (default: your latest image in this channel)",
)
async def recipe_save(
    interaction: discord.Interaction[Any], name: app_commands.Range[str, 1, 64], source: app_commands.Range[str, 1, 6000] | None = None
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = bot_of(interaction)
    message_id = None
    if source:
        found = await bot.recipes.recipe_from(interaction, source)
        if found is None:
            return
        recipe_, _, message_id = found
    else:
        latest = await bot.recipes.latest_post(interaction)
        if latest is None:
            await send_private(interaction, "You have no image in this channel yet; give `source` (a message link or a recipe code).")
            return
        recipe_, message_id = latest
    from bot.registry import RegistryError

    try:
        entry = await bot.recipes.save_to_book(interaction, name, recipe_, source_message_id=message_id)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Saved to the recipe book as **{entry.name}**; anyone here can `/recipe use name:{entry.name}`.")


@recipe.command(name="list", description="Browse this server's recipe book")
@app_commands.describe(sort="Newest first or most used first", model="Only recipes for this model", lora="Only recipes using this LoRA",
                       author="Only recipes saved by this member", page="Page number")  # fmt: skip
async def recipe_list(
    interaction: discord.Interaction[Any],
    sort: Literal["newest", "most_used", "name"] = "newest",
    model: app_commands.Range[str, 1, 100] | None = None,
    lora: app_commands.Range[str, 1, 100] | None = None,
    author: discord.User | None = None,
    page: app_commands.Range[int, 1, 1000] = 1,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).recipes.list(interaction, sort=sort, model=model, lora=lora, author=author, page=page)


@recipe.command(name="show", description="Show a recipe of the book, with its buttons")
@app_commands.describe(name="The recipe")
@app_commands.autocomplete(name=book_autocomplete)
async def recipe_show(interaction: discord.Interaction[Any], name: app_commands.Range[str, 1, 100]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).recipes.show(interaction, name)


@recipe.command(name="use", description="Make a recipe of the book, optionally changed")
@app_commands.describe(
    name="The recipe", prompt="Use this prompt instead", seed="Use this seed", new_seed="Use a new random seed",
    weights="Change LoRA weights, e.g. watercolor:0.5, pixel-art:0.8",
)  # fmt: skip
@app_commands.autocomplete(name=book_autocomplete)
async def recipe_use(
    interaction: discord.Interaction[Any],
    name: app_commands.Range[str, 1, 100],
    prompt: app_commands.Range[str, 1, 6000] | None = None,
    seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
    new_seed: bool = False,
    weights: app_commands.Range[str, 1, 500] | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).recipes.use(interaction, name, prompt=prompt, seed=seed, weights=weights, reseed=new_seed)


@recipe.command(name="delete", description="Remove a recipe from the book (its author or an admin)")
@app_commands.describe(name="The recipe")
@app_commands.autocomplete(name=book_autocomplete)
async def recipe_delete(interaction: discord.Interaction[Any], name: app_commands.Range[str, 1, 100]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).recipes.delete(interaction, name)


@recipe.command(name="read", description="Read the recipe of an image, from here or made with another tool")
@app_commands.describe(image="The image file (PNG keeps its recipe best)", link="Or a link to a message with the image")
async def recipe_read(
    interaction: discord.Interaction[Any], image: discord.Attachment | None = None, link: app_commands.Range[str, 1, 300] | None = None
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = bot_of(interaction)
    if image is not None:
        await bot.recipes.read_attachment(interaction, image)
        return
    if not link:
        await send_private(interaction, "Attach the image to `image`, or paste a link to the message that has it in `link`.")
        return
    from bot.recipe_actions import MESSAGE_LINK

    match = MESSAGE_LINK.search(link)
    if match is None or match[1] != str(interaction.guild_id):
        await send_private(interaction, "That is not a link to a message in this server (right-click a message → Copy Message Link).")
        return
    channel = bot.get_partial_messageable(int(match[2]), guild_id=interaction.guild_id)
    try:
        message = await channel.fetch_message(int(match[3]))
    except discord.HTTPException as exc:
        await send_private(interaction, f"I can't open that message ({exc.status}); I need Read Message History in its channel.")
        return
    await bot.recipes.read_message(interaction, message)


@app_commands.context_menu(name="Remix this image")
@app_commands.guild_only()
async def remix_this_image(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).recipes.read_message(interaction, message)
