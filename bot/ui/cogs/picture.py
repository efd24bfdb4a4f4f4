"""Pictures in (issue 20): the "Use as starting image" context menu, Vary and Upscale under
every result, the starting-image modal, and edits: ``/edit`` and the "Edit this image" menu
(an edit model such as FLUX.1 Kontext changes the picture as the instruction says).
``/imagine``'s own ``image`` option is in its cog; the work of all of them is
:class:`bot.ui.pictures.PictureActions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from bot.pictures import edit_variant
from bot.ui import views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.imagine import SIZES, lora_choices, model_choices, parse_size
from bot.ui.common import send_private
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork, ModalWork


@app_commands.context_menu(name="Use as starting image")
@app_commands.guild_only()
async def use_as_starting_image(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    # No deferral: the modal must be Discord's first answer.
    await features_of(interaction).pictures.use_as_start(interaction, message)


@app_commands.context_menu(name="Edit this image")
@app_commands.guild_only()
async def edit_this_image(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    # No deferral: the modal must be Discord's first answer.
    await features_of(interaction).pictures.edit_this(interaction, message)


async def edit_model_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Only edit models (a variant that edits: FLUX.1 Kontext, Qwen-Image-Edit)."""
    return await model_choices(interaction, current, where=lambda m: edit_variant(m.architecture, m.variant) is not None)


async def edit_lora_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """LoRAs for the edit model chosen, else for the server's first edit model (not the default
    model, which /edit does not use)."""
    if interaction.guild_id is None:
        return []
    bot = features_of(interaction)
    if getattr(interaction.namespace, "model", None):
        chosen = await bot.actions.chosen_model(interaction)
    else:
        chosen = next(iter(await bot.pictures.edit_models(interaction.guild_id, interaction.channel_id)), None)
    return await lora_choices(interaction, current, chosen)


@app_commands.command(name="edit", description="Change a picture as an instruction says, with an edit model (FLUX.1 Kontext, Qwen-Image-Edit)")
@app_commands.guild_only()
@app_commands.describe(
    image="The picture to edit (PNG, JPEG or WebP)",
    instruction="What to change, e.g. make the sky red, or put a hat on the cat",
    model="Edit model (default: the server's first)",
    seed="Seed for a reproducible edit (default: random)",
    steps="Denoising steps (default: the model's; all of them run, an edit has no strength)",
    size="Result size (default: the picture's shape at the model's size)",
    lora1="A LoRA (only those made for the chosen model are offered)",
    weight1="Weight of the LoRA, e.g. 0.8",
    lora2="Second LoRA",
    weight2="Weight of the second LoRA",
    image2="A second picture, for edit models that take several (Qwen-Image-Edit-2509)",
    image3="A third picture, for edit models that take several",
)
@app_commands.choices(size=[app_commands.Choice(name=label, value=value) for label, value in SIZES])
@app_commands.autocomplete(model=edit_model_autocomplete, lora1=edit_lora_autocomplete, lora2=edit_lora_autocomplete)
async def edit(
    interaction: discord.Interaction[Any],
    image: discord.Attachment,
    instruction: app_commands.Range[str, 1, 6000],
    model: app_commands.Range[str, 1, 100] | None = None,
    seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
    steps: app_commands.Range[int, 1, 150] | None = None,
    size: str | None = None,
    lora1: app_commands.Range[str, 1, 100] | None = None,
    weight1: app_commands.Range[str, 1, 32] | None = None,
    lora2: app_commands.Range[str, 1, 100] | None = None,
    weight2: app_commands.Range[str, 1, 32] | None = None,
    image2: discord.Attachment | None = None,
    image3: discord.Attachment | None = None,
) -> None:
    # Acknowledge first: fetching and checking the picture may take longer than 3 seconds.
    await interaction.response.defer(ephemeral=True, thinking=True)
    parsed = None
    if size:
        parsed = parse_size(size)
        if parsed is None:
            await send_private(interaction, f"Size `{size[:40]}` is not one of the sizes offered; pick one from the list.")
            return
    await features_of(interaction).pictures.edit_command(
        interaction, image=image, instruction=instruction, model=model,
        extra=[a for a in (image2, image3) if a is not None], size=parsed,
        seed=seed, steps=steps, slots=[(lora1, weight1), (lora2, weight2)],
    )  # fmt: skip


class PictureCog(FeatureCog, name="pictures"):
    feature_commands = (use_as_starting_image, edit_this_image, edit)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {views.PictureButton: lambda i, item: f.pictures.button(i, item.action)}

    def modals(self) -> Mapping[str, ModalWork]:
        f = self.features
        return {
            "startimage": lambda i, kind, target, fields: f.pictures.use_submit(i, target, fields),
            "editimage": lambda i, kind, target, fields: f.pictures.edit_submit(i, target, fields),
        }
