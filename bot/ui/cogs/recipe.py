"""``/recipe``: every saved recipe, a member's own and the server's book; and the "Remix this
image" message command.

Members used to have ``/recipes`` (their own) beside ``/recipe`` (the server's book), with
overlapping verbs, and could not guess which held what they saved. Now one group, and where
a recipe lives is its ``scope``: ``mine`` (private, only you see and use it) or ``server``
(the book, for everyone; names unique per server). ``save`` keeps it for you unless told
``scope:server``; ``list`` without a scope shows both, labelled; ``show``, ``use``,
``delete`` and ``share`` look a name up in both and ask only when both have it. ``read``
reads the recipe of any image (an attachment or a message link).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import discord
from discord import app_commands

from bot.ui import views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.common import send_private
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork, ModalWork

recipe = app_commands.Group(name="recipe", description="Your saved recipes and the server's recipe book", guild_only=True)

ScopeOption = Literal["mine", "server"]
_SCOPE_HELP = "mine (only you) or server (the recipe book); default: look in both"


async def name_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Names in the scope already chosen in the command (both, labelled, when none is)."""
    if interaction.guild_id is None:
        return []
    scope = getattr(interaction.namespace, "scope", None)
    scope = scope if scope in ("mine", "server") else None
    choices = await features_of(interaction).recipes.name_choices(interaction.guild_id, interaction.user.id, current, scope)
    return [app_commands.Choice(name=label, value=name) for label, name in choices]


@recipe.command(name="share", description="Post a recipe card in this channel")
@app_commands.describe(source="A saved recipe's name, a recipe code (AT1.…) or a link to an image made here", scope=_SCOPE_HELP)
@app_commands.autocomplete(source=name_autocomplete)
async def recipe_share(
    interaction: discord.Interaction[Any], source: app_commands.Range[str, 1, 6000], scope: ScopeOption | None = None
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = features_of(interaction)
    found = await bot.recipes.recipe_from(interaction, source, scopes=(scope,) if scope else None)
    if found is None:
        return
    recipe_, author, message_id, named = found
    in_book = named is not None and named.scope == "server"
    posted = await bot.recipes.post_card(
        interaction, recipe_, author_id=author, source="book" if in_book else ("mine" if named else "code"),
        source_message_id=message_id, source_channel_id=None, book_name=named.name if in_book and named else None,
    )  # fmt: skip
    if posted is not None:
        await send_private(interaction, f"Shared: {posted.jump_url}")


@recipe.command(name="save", description="Save a recipe under a name, for you (default) or the server's book")
@app_commands.describe(
    name="A name (letters, digits, spaces, - or _); in the server's book nobody may have used it",
    source="A link to an image or card, a recipe code or a saved recipe's name (default: your latest image here)",
    scope="mine (default: only you see it) or server (the recipe book, for everyone)",
)
async def recipe_save(
    interaction: discord.Interaction[Any],
    name: app_commands.Range[str, 1, 64],
    source: app_commands.Range[str, 1, 6000] | None = None,
    scope: ScopeOption = "mine",
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = features_of(interaction)
    message_id = None
    if source:
        # A name is looked up in the other store first: saving copies between them.
        other: tuple[ScopeOption, ScopeOption] = ("mine", "server") if scope == "server" else ("server", "mine")
        found = await bot.recipes.recipe_from(interaction, source, scopes=other, first_found=True)
        if found is None:
            return
        recipe_, _, message_id, _ = found
    else:
        latest = await bot.recipes.latest_post(interaction)
        if latest is None:
            await send_private(interaction, "You have no image in this channel yet; give `source` (a message link or a recipe code).")
            return
        recipe_, message_id = latest
    from bot.registry import RegistryError

    try:
        if scope == "server":
            entry = await bot.recipes.save_to_book(interaction, name, recipe_, source_message_id=message_id)
        else:
            assert interaction.guild_id is not None
            saved = await bot.registry.saved_recipes.save(interaction.guild_id, interaction.user.id, name, recipe_.to_json())
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    if scope == "server":
        await send_private(interaction, f"Saved to the server's recipe book as **{entry.name}**; anyone here can `/recipe use scope:server name:{entry.name}`.")
    else:
        await send_private(
            interaction,
            f"Saved as **{saved.name}** in your recipes (only you see them); make it with `/recipe use scope:mine name:{saved.name}`. "
            "To give it to everyone, `/recipe save scope:server`.",
        )


@recipe.command(name="list", description="Your saved recipes and the server's recipe book")
@app_commands.describe(scope="mine, server, or both (default)", sort="Newest first, most used first (the book) or by name",
                       model="Only recipes for this model", lora="Only recipes using this LoRA",
                       author="Only the book's recipes saved by this member", page="Page number")  # fmt: skip
async def recipe_list(
    interaction: discord.Interaction[Any],
    scope: ScopeOption | None = None,
    sort: Literal["newest", "most_used", "name"] = "newest",
    model: app_commands.Range[str, 1, 100] | None = None,
    lora: app_commands.Range[str, 1, 100] | None = None,
    author: discord.User | None = None,
    page: app_commands.Range[int, 1, 1000] = 1,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await features_of(interaction).recipes.list(interaction, sort=sort, model=model, lora=lora, author=author, page=page, scope=scope)


@recipe.command(name="show", description="Show a saved recipe as a card, with its buttons")
@app_commands.describe(name="The recipe", scope=_SCOPE_HELP)
@app_commands.autocomplete(name=name_autocomplete)
async def recipe_show(interaction: discord.Interaction[Any], name: app_commands.Range[str, 1, 100], scope: ScopeOption | None = None) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await features_of(interaction).recipes.show(interaction, name, scope)


@recipe.command(name="use", description="Make a saved recipe again, optionally changed")
@app_commands.describe(
    name="The recipe", scope=_SCOPE_HELP, prompt="Use this prompt instead", seed="Use this seed",
    new_seed="Use a new random seed", weights="Change LoRA weights, e.g. watercolor:0.5, pixel-art:0.8",
)  # fmt: skip
@app_commands.autocomplete(name=name_autocomplete)
async def recipe_use(
    interaction: discord.Interaction[Any],
    name: app_commands.Range[str, 1, 100],
    scope: ScopeOption | None = None,
    prompt: app_commands.Range[str, 1, 6000] | None = None,
    seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
    new_seed: bool = False,
    weights: app_commands.Range[str, 1, 500] | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await features_of(interaction).recipes.use(interaction, name, prompt=prompt, seed=seed, weights=weights, reseed=new_seed, scope=scope)


@recipe.command(name="delete", description="Delete one of your recipes, or one from the book (its author or an admin)")
@app_commands.describe(name="The recipe", scope=_SCOPE_HELP)
@app_commands.autocomplete(name=name_autocomplete)
async def recipe_delete(interaction: discord.Interaction[Any], name: app_commands.Range[str, 1, 100], scope: ScopeOption | None = None) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await features_of(interaction).recipes.delete(interaction, name, scope)


@recipe.command(name="read", description="Read the recipe of an image, from here or made with another tool")
@app_commands.describe(image="The image file (PNG keeps its recipe best)", link="Or a link to a message with the image")
async def recipe_read(
    interaction: discord.Interaction[Any], image: discord.Attachment | None = None, link: app_commands.Range[str, 1, 300] | None = None
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = features_of(interaction)
    if image is not None:
        await bot.image_reader.read_attachment(interaction, image)
        return
    if not link:
        await send_private(interaction, "Attach the image to `image`, or paste a link to the message that has it in `link`.")
        return
    from bot.ui.recipe_actions import MESSAGE_LINK

    match = MESSAGE_LINK.search(link)
    if match is None or match[1] != str(interaction.guild_id):
        await send_private(interaction, "That is not a link to a message in this server (right-click a message → Copy Message Link).")
        return
    channel = bot.client.get_partial_messageable(int(match[2]), guild_id=interaction.guild_id)
    try:
        message = await channel.fetch_message(int(match[3]))
    except discord.HTTPException as exc:
        await send_private(interaction, f"I can't open that message ({exc.status}); I need Read Message History in its channel.")
        return
    await bot.image_reader.read_message(interaction, message)


@app_commands.context_menu(name="Remix this image")
@app_commands.guild_only()
async def remix_this_image(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await features_of(interaction).image_reader.read_message(interaction, message)


class RecipesCog(FeatureCog, name="recipes"):
    feature_commands = (recipe, remix_this_image)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {views.CardButton: lambda i, item: f.recipes.card_button(i, item.action, item.card_id)}

    def modals(self) -> Mapping[str, ModalWork]:
        f = self.features
        return {
            kind: lambda i, kind, target, fields: f.recipes.modal_submit(i, kind, target, fields)
            for kind in ("remixcard", "savepost", "savecard")
        }
