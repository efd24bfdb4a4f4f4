"""``/privacy``: what Atelier keeps about you in this server, and deleting it.

``show`` lists it; ``delete`` asks for a click on a button first (it cannot be undone),
then deletes your saved recipes, your entries in the server's recipe book, the recipe cards
you shared or are credited on, bookmarks and the recipe records of images made for you,
and with ``images:True`` the image messages themselves. Admin changes you made stay in the
server's audit log with your name removed. See the README's "Data" section.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from bot.operator.guild_lifecycle import DAY_S
from bot.ui import embeds, views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.common import send_private
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork

privacy = app_commands.Group(name="privacy", description="See or delete what Atelier keeps about you", guild_only=True)

#: Image messages one /privacy delete removes at most (each is a rate-limited request).
MAX_IMAGE_DELETIONS = 500


def _jump(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


@privacy.command(name="show", description="See what Atelier keeps about you in this server")
async def privacy_show(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    data = await bot.registry.privacy.member_data(interaction.guild_id, interaction.user.id)
    waiting = bot.dispatcher.open_jobs(interaction.guild_id, interaction.user.id)
    embed = discord.Embed(title="What Atelier keeps about you here", colour=embeds.ACCENT)
    recipes = ", ".join(f"**{embeds.truncate(n, 50)}**" for n in data.saved_recipes[:10])
    more = f" and {len(data.saved_recipes) - 10} more" if len(data.saved_recipes) > 10 else ""
    embed.add_field(
        name=f"Saved recipes ({len(data.saved_recipes)})", value=(recipes + more) or "none", inline=False
    )
    links = " ".join(f"[image]({_jump(interaction.guild_id, c, m)})" for c, m in data.posts[:5])
    embed.add_field(
        name=f"Images made for you ({len(data.posts)})",
        value=(f"The recipe of each, for its buttons. Latest: {links}" if data.posts else "none"),
        inline=False,
    )
    book = ", ".join(f"**{embeds.truncate(n, 50)}**" for n in data.book_entries[:10])
    embed.add_field(
        name=f"Your recipes in the server's recipe book ({len(data.book_entries)})", value=book or "none", inline=False
    )
    embed.add_field(name="Recipe cards you shared or are credited on", value=str(data.cards), inline=True)
    embed.add_field(name="Bookmarked LoRAs", value=str(data.bookmarks), inline=True)
    embed.add_field(name="Your admin changes in the audit log", value=str(data.audit_entries), inline=True)
    embed.add_field(name="Jobs waiting now", value=str(len(waiting)), inline=True)
    embed.add_field(name="Finished jobs (kept a day)", value=str(data.finished_jobs), inline=True)
    pictures = getattr(bot.client, "pictures", None)
    if pictures is not None:
        inputs = await pictures.count_for(interaction.guild_id, interaction.user.id)
        embed.add_field(name="Input images you attached (for re-runs)", value=str(inputs), inline=True)
    grace = bot.lifecycle.grace_s / DAY_S
    embed.set_footer(
        text=(
            "Kept with your user id until you delete it, or until the bot has been out of this server "
            f"for {grace:g} days. A job (with its prompt) is kept until it has finished, and a day "
            "after for time estimates. /privacy delete removes it."
        )
    )
    await send_private(interaction, embed=embeds.fit_embed(embed))


@privacy.command(name="delete", description="Delete what Atelier keeps about you in this server")
@app_commands.describe(images="Also delete the image messages the bot posted for you here")
async def privacy_delete(interaction: discord.Interaction[Any], images: bool = False) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    data = await bot.registry.privacy.member_data(interaction.guild_id, interaction.user.id)
    # Pictures alone count too: a member may only have brought in an edit's reference picture.
    pictures = getattr(bot.client, "pictures", None)
    inputs = await pictures.count_for(interaction.guild_id, interaction.user.id) if pictures is not None else 0
    if data.empty and not inputs:
        await send_private(interaction, "Atelier keeps nothing about you in this server.")
        return
    what = [
        f"{len(data.saved_recipes)} saved recipe(s)",
        f"{len(data.book_entries)} recipe(s) of yours in the recipe book",
        f"{data.cards} recipe card record(s)",
        f"the recipes of {len(data.posts)} image(s)" + (" and the image messages" if images else ""),
        f"{data.bookmarks} bookmark(s)",
        f"{data.finished_jobs} finished job(s)",
        f"{inputs} input image(s)",
    ]
    text = (
        "This deletes " + ", ".join(what) + ". "
        + (f"Your name is removed from {data.audit_entries} audit entries. " if data.audit_entries else "")
        + "It cannot be undone. Press the button to go ahead."
    )
    await send_private(interaction, text, view=views.privacy_delete_view(interaction.user.id, images))


async def delete_member_data(interaction: discord.Interaction[Any], user_id: int, *, images: bool) -> None:
    """The confirmation button's work: only the member it was made for may press it."""
    if interaction.guild_id is None or interaction.user.id != user_id:
        await send_private(interaction, "This button deletes another member's data; run `/privacy delete` yourself.")
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = features_of(interaction)
    done = await bot.registry.privacy.delete_member_data(interaction.guild_id, user_id)
    pictures = getattr(bot.client, "pictures", None)  # input images the member brought (bot.pictures)
    inputs = await pictures.forget_member(interaction.guild_id, user_id) if pictures is not None else 0
    removed = 0
    if images:
        for channel_id, message_id in done.posts[:MAX_IMAGE_DELETIONS]:
            message = bot.client.get_partial_messageable(channel_id, guild_id=interaction.guild_id).get_partial_message(message_id)
            with contextlib.suppress(discord.NotFound, discord.Forbidden):
                await message.delete()
                removed += 1
    parts = [
        f"{done.saved_recipes} saved recipe(s)",
        f"{done.book_entries} recipe book entr{'y' if done.book_entries == 1 else 'ies'}",
        f"{done.cards} card record(s)",
        f"{len(done.posts)} image record(s)",
        f"{done.bookmarks} bookmark(s)",
        f"{done.finished_jobs} finished job(s)",
        f"{inputs} input image(s)",
    ]
    text = "Deleted " + ", ".join(parts) + "."
    if images:
        text += f" {removed} image message(s) deleted."
    if done.audit_entries:
        text += f" Your name was removed from {done.audit_entries} audit entries."
    await send_private(interaction, text)


class PrivacyCog(FeatureCog, name="privacy"):
    feature_commands = (privacy,)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        return {views.PrivacyDeleteButton: lambda i, item: delete_member_data(i, item.user_id, images=item.images)}
