"""Reading the recipe of an image from anywhere: "Remix this image" and ``/recipe read``.

Our own records come first (the post by its message, then by its attachment, then a shared
card), since they are exact; otherwise the file's own metadata is read through
:mod:`engine.recipe.readers` (A1111, ComfyUI, stealth PNGs, ...) and matched to this server's
registry by :mod:`bot.recipes.match`. The answer is a recipe card
(:class:`bot.ui.recipe_actions.RecipeActions`), with Remix and Use buttons.

Attachments are always fetched from their original ``url``: Discord's media proxy may serve
a WebP preview that has lost the PNG's text chunks. The file is untrusted: its size is
checked before the download and its reading is bounded in time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bot.recipes.match import health, match_found
from bot.registry import Registry
from bot.services import Services
from bot.ui import embeds, views
from bot.ui.common import send_private
from bot.ui.recipe_actions import RecipeActions, stored_recipe
from engine.protocol import Recipe
from engine.recipe.readers import MAX_FILE_BYTES, read_image

#: Reading one image may take this long (a worker thread; large stealth PNGs decode pixels).
READ_TIMEOUT_S = 20.0


class ImageReader:
    """Reads images for one bot; answers with a card made by ``recipes``."""

    def __init__(self, services: Services, recipes: RecipeActions) -> None:
        self.services = services
        self.recipes = recipes

    @property
    def registry(self) -> Registry:
        return self.services.registry

    async def read_message(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """"Remix this image" and ``/recipe read`` with a link (the interaction is deferred)."""
        assert interaction.guild_id is not None
        post = await self.registry.posts.get(interaction.guild_id, message.id)
        if post is None:
            for attachment in message.attachments:
                source_id = await self.registry.book.post_for_attachment(interaction.guild_id, attachment.id)
                if source_id is not None:
                    post = await self.registry.posts.get(interaction.guild_id, source_id)
                    break
        if post is not None and (recipe := stored_recipe(post.recipe)) is not None:
            await self._answer_import(
                interaction, recipe, title="📜 An image made here", author_id=post.user_id, source="post",
                source_message_id=post.message_id, source_channel_id=post.channel_id,
                image_url=next((a.url for a in message.attachments), None), notes=["Read from this server's records (exact)."],
            )  # fmt: skip
            return
        card = await self.registry.book.card_by_message(interaction.guild_id, message.id)
        if card is not None and (recipe := stored_recipe(card.recipe)) is not None:
            await self._answer_import(interaction, recipe, title="📜 A shared recipe", author_id=card.author_id, source=card.source,
                                      source_message_id=card.source_message_id, source_channel_id=card.source_channel_id)  # fmt: skip
            return
        images = [a for a in message.attachments if (a.content_type or "").startswith("image/") or a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))]
        if not images:
            await send_private(interaction, "That message has no image file. Use it on a message with the image attached, or attach the file to `/recipe read`.")
            return
        await self.read_attachment(interaction, images[0], source_message=message)

    async def read_attachment(self, interaction: discord.Interaction[Any], attachment: discord.Attachment, *, source_message: discord.Message | None = None) -> None:
        if attachment.size > MAX_FILE_BYTES:
            await send_private(interaction, f"`{attachment.filename}` is {attachment.size / 2**20:.0f} MiB; I read images up to {MAX_FILE_BYTES // 2**20} MiB.")
            return
        try:
            # The original file, never the media proxy's preview (which may drop PNG chunks).
            data = await attachment.read(use_cached=False)
        except (discord.HTTPException, discord.NotFound) as exc:
            await send_private(interaction, f"I could not download `{attachment.filename}` ({getattr(exc, 'status', exc)}); try again.")
            return
        try:
            read = await asyncio.wait_for(asyncio.to_thread(read_image, data), READ_TIMEOUT_S)
        except TimeoutError:
            await send_private(interaction, "Reading that image took too long, so I stopped. Try the original PNG file.")
            return
        if read.found is None:
            await send_private(interaction, f"`{embeds.truncate(attachment.filename, 80)}`: {read.reason}")
            return
        found = read.found
        assert interaction.guild_id is not None
        catalog = await self.registry.catalogs.get(interaction.guild_id)
        matched = await match_found(self.registry, catalog, interaction.guild_id, found)
        notes = list(matched.notes)
        if matched.how:
            notes.insert(0, "Matched " + ", ".join(matched.how) + ".")
        if found.missing:
            notes.append("Not in the image, so the model's defaults are used: " + ", ".join(found.missing) + ".")
        await self._answer_import(
            interaction, matched.recipe, title=f"🖼️ Recipe read from a {found.format} image", author_id=None,
            source=f"import:{found.format}", source_message_id=source_message.id if source_message else None,
            source_channel_id=source_message.channel.id if source_message else None, image_url=attachment.url,
            notes=notes, problems=matched.problems,
        )  # fmt: skip

    async def _answer_import(self, interaction: discord.Interaction[Any], recipe: Recipe, *, title: str, notes: list[str] | None = None,
                             problems: list[str] | None = None, **card_fields: Any) -> None:  # fmt: skip
        assert interaction.guild_id is not None and interaction.channel_id is not None
        card = await self.registry.book.add_card(
            interaction.guild_id, interaction.channel_id, recipe.to_json(), shared_by=interaction.user.id, **card_fields
        )
        if problems is not None:
            problems = problems + health(recipe, await self.registry.catalogs.get(interaction.guild_id))
        embed = await self.recipes.card_embed(card, recipe, title=title, notes=notes, problems=problems)
        await send_private(interaction, "Here is the recipe. **Remix** opens it in the form; **Use this recipe** runs it as is.",
                           embed=embed, view=views.card_view(card.id, shareable=True))  # fmt: skip
