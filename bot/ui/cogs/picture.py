"""Pictures in (issue 20): the "Use as starting image" context menu, Vary and Upscale under
every result, and the starting-image modal. ``/imagine``'s own ``image`` option is in its cog;
the work of all of them is :class:`bot.ui.pictures.PictureActions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from bot.ui import views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork, ModalWork


@app_commands.context_menu(name="Use as starting image")
@app_commands.guild_only()
async def use_as_starting_image(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    # No deferral: the modal must be Discord's first answer.
    await features_of(interaction).pictures.use_as_start(interaction, message)


class PictureCog(FeatureCog, name="pictures"):
    feature_commands = (use_as_starting_image,)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {views.PictureButton: lambda i, item: f.pictures.button(i, item.action)}

    def modals(self) -> Mapping[str, ModalWork]:
        f = self.features
        return {"startimage": lambda i, kind, target, fields: f.pictures.use_submit(i, target, fields)}
