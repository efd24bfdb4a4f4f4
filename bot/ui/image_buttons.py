"""The buttons under a posted image (Reroll, Remix, Recipe, Save, Share, Delete) and the
Remix modal's submit.

Each button reads the recipe behind the clicked image, from the database or, moments after
the post, from the dispatcher's memory; reruns go through generation
(:class:`bot.ui.actions.Actions`), sharing and saving through the recipes feature.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Protocol

import discord

from bot.recipes.text import recipe_reply, suggest_name
from bot.services import Services
from bot.ui import views
from bot.ui.actions import Actions, Parent, new_seed, parent_of, show_modal
from bot.ui.common import can_manage_messages, send_private
from engine.protocol import Recipe


class PostSharing(Protocol):
    """The recipes feature's "Share" of an image's recipe (see bot.ui.recipe_actions)."""

    async def share_post(self, interaction: discord.Interaction[Any], requester_id: int, recipe: Recipe) -> None: ...

class ImageButtons:
    """The image buttons of one bot. ``recipes`` is set once the recipes feature is built on
    top of generation (it reruns through :meth:`bot.ui.actions.Actions.rerun`)."""

    def __init__(self, services: Services, actions: Actions) -> None:
        self.services = services
        self.actions = actions
        self.recipes: PostSharing | None = None

    async def _post_recipe(self, interaction: discord.Interaction[Any]) -> tuple[int, Recipe] | None:
        """(requester id, recipe) behind the clicked image, from the database.

        A click within moments of the post may come before its record is written; the
        dispatcher still holds that job, so its recipe is used rather than refusing.
        """
        assert interaction.guild_id is not None and interaction.message is not None
        post = await self.services.registry.posts.get(interaction.guild_id, interaction.message.id)
        if post is not None:
            return post.user_id, Recipe.from_json(post.recipe)
        just_posted = self.services.dispatcher.posted_job(interaction.message.id)
        if just_posted is not None and just_posted.guild_id == interaction.guild_id:
            return just_posted.user_id, just_posted.recipe
        await send_private(interaction, "I have no recipe for this message any more (it may have been deleted).")
        return None

    async def image_button(self, interaction: discord.Interaction[Any], action: str) -> None:
        if interaction.guild_id is None or interaction.message is None:
            await send_private(interaction, "This button only works on images in a server channel.")
            return
        if action == "remix":
            # A modal must be the first response, so no deferral here; one indexed lookup.
            found = await self._post_recipe(interaction)
            if found is None:
                return
            _, recipe = found
            await show_modal(
                interaction,
                views.RemixModal(
                    message_id=interaction.message.id,
                    prompt=recipe.prompt,
                    negative=recipe.negative_prompt,
                    loras="\n".join(f"{lo.display_name}:{lo.weight:g}" for lo in recipe.loras),
                    seed=str(recipe.seed),
                    steps=str(recipe.steps),
                ),
            )
            return
        if action == "save":
            # The member names it: a modal first (no deferral), prefilled with a valid name.
            found = await self._post_recipe(interaction)
            if found is not None:
                modal = views.SaveRecipeModal(
                    kind="savepost", target=interaction.message.id, name=suggest_name(found[1]), scope="me"
                )
                await show_modal(interaction, modal)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self._post_recipe(interaction)
        if found is None:
            return
        requester_id, recipe = found
        if action == "reroll":
            await self.actions.rerun(interaction, recipe, origin="reroll", seed=new_seed(), parent=parent_of(interaction, "reroll"))
        elif action == "recipe":
            text, attachment = recipe_reply(recipe)
            files = [discord.File(io.BytesIO(attachment.encode("utf-8")), filename="recipe.txt")] if attachment else []
            await send_private(interaction, text, files=files)
        elif action == "share":
            assert self.recipes is not None
            await self.recipes.share_post(interaction, requester_id, recipe)
        elif action == "delete":
            if interaction.user.id != requester_id and not can_manage_messages(interaction):
                await send_private(
                    interaction, "Only the person who asked for this image, or a member with Manage Messages, can delete it."
                )
                return
            try:
                await interaction.message.delete()
            except discord.HTTPException as exc:
                await send_private(interaction, f"Discord did not let me delete it ({exc.status}).")
                return
            await self.services.registry.posts.delete(interaction.guild_id, interaction.message.id)
            await send_private(interaction, "Deleted.")

    async def remix_submit(self, interaction: discord.Interaction[Any], message_id: int, fields: Mapping[str, str]) -> None:
        """Run the Remix modal of the image ``message_id`` with the submitted text ``fields``."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None:
            await send_private(interaction, "Remix only works on images in a server channel.")
            return
        post = await self.services.registry.posts.get(interaction.guild_id, message_id)
        just_posted = self.services.dispatcher.posted_job(message_id)
        if post is not None:
            recipe = Recipe.from_json(post.recipe)
        elif just_posted is not None and just_posted.guild_id == interaction.guild_id:
            recipe = just_posted.recipe
        else:
            await send_private(interaction, "The original image is gone, so there is nothing to remix.")
            return
        parent = Parent(message_id, interaction.channel_id or 0, "🎛️ Remix of this image", interaction.guild_id)
        await self.actions.run_remix_form(interaction, recipe, fields, parent=parent)
