"""``/embedding``: textual-inversion embeddings members call by name in a prompt or negative.

As in A1111, an embedding is used by writing its name ("EasyNegative") in the prompt or the
negative prompt; the registry maps that name to the file, checks it fits the chosen model and
the image's recipe carries it (``TI hashes`` in the PNG). ``add`` and ``remove`` are for admins.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.registry import RegistryError
from bot.registry.models import EmbeddingEntry
from bot.ui import embeds
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.files import inspect_new_file, unregistered_file_choices
from bot.ui.common import admin_only, affected_recipes, send_private
from bot.ui.features import features_of
from engine.protocol import architecture_label

embedding = app_commands.Group(
    name="embedding", description="Textual-inversion embeddings used by name in prompts", guild_only=True
)


async def _file_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    return await unregistered_file_choices(interaction, "embedding", current)


async def _name_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    found = await features_of(interaction).registry.embeddings.autocomplete(interaction.guild_id, current)
    return [app_commands.Choice(name=e.name[:100], value=e.name[:100]) for e in found]


def _line(entry: EmbeddingEntry) -> str:
    vectors = f" · {entry.vectors} vectors" if entry.vectors else ""
    state = "" if entry.enabled else " · disabled"
    return f"**{entry.name}** · {architecture_label(entry.architecture)}{vectors}{state}"


@embedding.command(name="add", description="Register an embedding file the engine can see (admin)")
@admin_only()
@app_commands.describe(
    file="Embedding .safetensors in the engine's LoRA folder",
    name="The word prompts call it by (default: the file name, as in A1111)",
    nsfw="Whether it is NSFW",
    description="A short description",
)
@app_commands.autocomplete(file=_file_autocomplete)
async def embedding_add(
    interaction: discord.Interaction[Any],
    file: str,
    name: app_commands.Range[str, 1, 100] | None = None,
    nsfw: bool = False,
    description: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    info = await inspect_new_file(interaction, "embedding", file)
    if info is None:
        return
    try:
        entry = EmbeddingEntry.from_file_info(info, name=name, nsfw=nsfw, description=description or "")
        added = await features_of(interaction).registry.embeddings.add(interaction.guild_id, entry, interaction.user.id)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(
        interaction,
        f"Registered **{added.name}** ({architecture_label(added.architecture)}, {added.vectors or '?'} vectors). "
        f"Members use it by writing `{added.name}` in a prompt or negative prompt.",
    )


@embedding.command(name="remove", description="Remove an embedding from this server (admin)")
@admin_only()
@app_commands.describe(name="The embedding")
@app_commands.autocomplete(name=_name_autocomplete)
async def embedding_remove(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    entry = await registry.embeddings.get(interaction.guild_id, name)
    uses = await registry.saved_recipes.using(interaction.guild_id, embedding=entry) if entry else []
    try:
        await registry.embeddings.remove(interaction.guild_id, name, interaction.user.id)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Removed **{entry.name if entry else name}**." + affected_recipes(uses))


@embedding.command(name="list", description="List this server's embeddings")
async def embedding_list(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    entries = await features_of(interaction).registry.embeddings.all(interaction.guild_id)
    await send_private(
        interaction,
        embed=embeds.list_embed(
            "Embeddings", [_line(e) for e in entries], empty="No embeddings yet: an admin adds one with `/embedding add`."
        ),
    )


class EmbeddingsCog(FeatureCog, name="embeddings"):
    feature_commands = (embedding,)
