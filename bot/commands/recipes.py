"""``/recipes``: the recipes a member kept with the Save recipe button under a result.

Saving would be a dead end without a way back to them: ``list`` shows each with its
``/imagine`` line, ``run`` queues one again (checked against today's registry, like any
request) and ``delete`` forgets one. Saved recipes are per member and per server.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot import embeds
from bot.commands.common import bot_of, send_private
from bot.recipe_text import imagine_command
from engine.protocol import EngineError, Recipe

recipes = app_commands.Group(name="recipes", description="Your saved recipes in this server", guild_only=True)

#: Characters of each recipe's /imagine line in the list; the Recipe button shows it whole.
LINE_PREVIEW = 300


async def saved_recipe_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    saved = await bot_of(interaction).registry.saved_recipes(interaction.guild_id, interaction.user.id)
    needle = current.lower()
    names = [s.name for s in saved if needle in s.name.lower() and len(s.name) <= 100]
    return [app_commands.Choice(name=n, value=n) for n in names[:25]]


@recipes.command(name="list", description="List the recipes you saved here")
async def recipes_list(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    saved = await bot_of(interaction).registry.saved_recipes(interaction.guild_id, interaction.user.id)
    lines = []
    for entry in saved:
        try:
            line = imagine_command(Recipe.from_json(entry.recipe))
        except (EngineError, KeyError, TypeError, ValueError):
            line = "(this recipe can no longer be read)"
        lines.append(f"**{entry.name}**\n`{embeds.truncate(line, LINE_PREVIEW)}`")
    await send_private(
        interaction,
        embed=embeds.list_embed(
            "Your saved recipes", lines, empty="None yet: press 💾 Save recipe under an image."
        ),
    )


@recipes.command(name="run", description="Make a saved recipe again")
@app_commands.describe(name="The saved recipe", new_seed="Use a new random seed instead of the saved one")
@app_commands.autocomplete(name=saved_recipe_autocomplete)
async def recipes_run(interaction: discord.Interaction[Any], name: str, new_seed: bool = False) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await bot_of(interaction).actions.run_saved_recipe(interaction, name, reseed=new_seed)


@recipes.command(name="delete", description="Forget a saved recipe")
@app_commands.describe(name="The saved recipe")
@app_commands.autocomplete(name=saved_recipe_autocomplete)
async def recipes_delete(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    deleted = await bot_of(interaction).registry.delete_recipe(interaction.guild_id, interaction.user.id, name)
    text = f"Deleted **{name}**." if deleted else f"You have no saved recipe named `{name}`; see `/recipes list`."
    await send_private(interaction, text)
