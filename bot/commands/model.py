"""``/model``: the base models a server offers; ``add`` is for admins (run-time check)."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot import embeds
from bot.commands.common import (
    admin_only,
    bot_of,
    inspect_new_file,
    send_private,
    to_choices,
    unregistered_file_choices,
)
from bot.registry import ModelEntry, RegistryError
from engine.families import FAMILIES, family_label
from engine.prediction import PREDICTION_LABELS

FAMILY_CHOICES = [app_commands.Choice(name=family_label(f), value=f) for f in FAMILIES]
PREDICTION_CHOICES = [app_commands.Choice(name=label, value=value or "auto") for value, label in PREDICTION_LABELS.items()]

model = app_commands.Group(name="model", description="The base models of this server", guild_only=True)


async def model_name_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    return to_choices(await bot_of(interaction).registry.autocomplete_models(interaction.guild_id, current))


async def model_file_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    return await unregistered_file_choices(interaction, "model", current)


def model_card(entry: ModelEntry) -> discord.Embed:
    embed = discord.Embed(title=f"Model · {entry.name}", colour=embeds.ACCENT, description=entry.description or None)
    embed.add_field(name="Architecture", value=entry.architecture, inline=True)
    embed.add_field(name="Default size", value=f"{entry.default_width}×{entry.default_height}", inline=True)
    embed.add_field(name="Default steps", value=str(entry.default_steps), inline=True)
    embed.add_field(name="Default CFG", value=f"{entry.default_cfg:g}", inline=True)
    embed.add_field(name="Default sampler", value=entry.default_sampler, inline=True)
    embed.add_field(name="Status", value="enabled" if entry.enabled else "disabled", inline=True)
    embed.add_field(name="Family", value=family_label(entry.family), inline=True)
    embed.add_field(name="Clip skip", value=str(entry.default_clip_skip), inline=True)
    embed.add_field(name="Prediction", value=PREDICTION_LABELS.get(entry.prediction_type, entry.prediction_type), inline=True)
    if entry.nsfw:
        embed.add_field(name="NSFW", value="yes", inline=True)
    if entry.allowed_channel_ids:
        embed.add_field(
            name="Channels", value=" ".join(f"<#{c}>" for c in sorted(entry.allowed_channel_ids)), inline=False
        )
    embed.add_field(name="File", value=f"`{entry.file}`" + (f"\nAutoV2 `{entry.autov2}`" if entry.autov2 else ""), inline=False)
    if entry.vae:
        embed.add_field(name="VAE", value=f"`{entry.vae}`", inline=False)
    return embeds.fit_embed(embed)


@model.command(name="list", description="List the models of this server")
async def model_list(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = bot_of(interaction)
    models = await bot.registry.list_models(interaction.guild_id)
    default = (await bot.registry.get_settings(interaction.guild_id)).default_model
    lines = [
        f"**{m.name}** · {m.architecture} · {m.default_width}×{m.default_height}"
        + (" · default" if default and m.name == default else "")
        + ("" if m.enabled else " · disabled")
        for m in models
    ]
    await send_private(interaction, embed=embeds.list_embed("Models", lines, empty="No models yet: an admin adds one with `/model add`."))


@model.command(name="info", description="Show a model's details")
@app_commands.describe(name="The model")
@app_commands.autocomplete(name=model_name_autocomplete)
async def model_info(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = bot_of(interaction).registry
    entry = await registry.get_model(interaction.guild_id, name)
    if entry is None:
        hints = (await registry.catalog(interaction.guild_id)).suggest_models(name)
        tip = (" Did you mean " + ", ".join(f"`{h}`" for h in hints) + "?") if hints else ""
        await send_private(interaction, f"No model named `{embeds.truncate(name, 100)}` here.{tip}")
        return
    await send_private(interaction, embed=model_card(entry))


@model.command(name="add", description="Register a model file the engine can see (admin)")
@admin_only()
@app_commands.describe(
    file="Model file or folder in the engine's model folder",
    name="Name members will pick (default: from the file)",
    nsfw="Whether it is NSFW",
    description="A short description",
    make_default="Use it when /imagine names no model",
    family="Model family (default: read from the file)",
    clip_skip="Default clip skip (anime SD 1.5 models usually want 2)",
    prediction="Prediction type (default: as the file says)",
    vae="A VAE .safetensors in the model folder to use instead of the model's own",
)
@app_commands.choices(family=FAMILY_CHOICES, prediction=PREDICTION_CHOICES)
@app_commands.autocomplete(file=model_file_autocomplete)
async def model_add(
    interaction: discord.Interaction[Any],
    file: str,
    name: app_commands.Range[str, 1, 100] | None = None,
    nsfw: bool = False,
    description: str | None = None,
    make_default: bool = False,
    family: str | None = None,
    clip_skip: app_commands.Range[int, 1, 12] | None = None,
    prediction: str | None = None,
    vae: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = bot_of(interaction)
    info = await inspect_new_file(interaction, "model", file)
    if info is None:
        return
    if info.architecture == "unknown":
        await send_private(interaction, f"I could not tell which architecture `{file}` is for, so I did not register it.")
        return
    try:
        extra = _model_options(family, clip_skip, prediction)
        entry = ModelEntry.from_file_info(
            info, name=name, nsfw=nsfw, description=description or "", vae=vae or "", **extra
        )
        added = await bot.registry.add_model(interaction.guild_id, entry, interaction.user.id)
        settings = await bot.registry.get_settings(interaction.guild_id)
        if make_default or not settings.default_model:
            await bot.registry.update_settings(interaction.guild_id, interaction.user.id, default_model=added.name)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Registered **{added.name}**.", embed=model_card(added))


def _model_options(family: str | None, clip_skip: int | None, prediction: str | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if family is not None:
        changes["family"] = family
    if clip_skip is not None:
        changes["default_clip_skip"] = clip_skip
    if prediction is not None:
        changes["prediction_type"] = "" if prediction == "auto" else prediction
    return changes


@model.command(name="defaults", description="Set a model's family, clip skip and prediction type (admin)")
@admin_only()
@app_commands.describe(
    name="The model",
    family="Model family (Pony, Illustrious, ...): LoRAs of other families get a warning",
    clip_skip="Clip skip used when a request gives none",
    prediction="Prediction type; auto reads it from the file",
)
@app_commands.choices(family=FAMILY_CHOICES, prediction=PREDICTION_CHOICES)
@app_commands.autocomplete(name=model_name_autocomplete)
async def model_defaults(
    interaction: discord.Interaction[Any],
    name: str,
    family: str | None = None,
    clip_skip: app_commands.Range[int, 1, 12] | None = None,
    prediction: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    changes = _model_options(family, clip_skip, prediction)
    if not changes:
        await send_private(interaction, "Nothing to change: give a family, a clip skip or a prediction type.")
        return
    try:
        updated = await bot_of(interaction).registry.update_model(interaction.guild_id, name, interaction.user.id, **changes)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Updated **{updated.name}**.", embed=model_card(updated))
