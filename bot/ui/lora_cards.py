"""A LoRA's card for admins: its Edit, Look up and Remove buttons and the Edit modal's submit.

The admin check is made on each click and again on each submit (a modal can be submitted
after the member lost the permission).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import discord

from bot.registry import Category, RegistryError
from bot.services import Services
from bot.sources.actions import SourceActions
from bot.ui import embeds, views
from bot.ui.actions import show_modal
from bot.ui.common import is_admin, send_private


class LoraCards:
    """The buttons and modal of LoRA cards; Look up goes to the Civitai sources feature."""

    def __init__(self, services: Services, sources: SourceActions) -> None:
        self.services = services
        self.sources = sources

    async def lora_card_button(self, interaction: discord.Interaction[Any], action: str, lora_id: int) -> None:
        if interaction.guild_id is None:
            await send_private(interaction, "This button only works in a server.")
            return
        if not is_admin(interaction):
            await send_private(interaction, "Only members with the **Manage Server** permission can change LoRAs.")
            return
        lora = await self.services.registry.loras.get_by_id(interaction.guild_id, lora_id)
        if lora is None:
            await send_private(interaction, "This LoRA is not registered any more.")
            return
        if action == "edit":
            await show_modal(
                interaction,
                views.LoraEditModal(lora_id=lora_id, **views.lora_edit_values(lora)),
            )
            return
        if action == "lookup":
            await self.sources.lookup(interaction, lora)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.services.registry.loras.remove(interaction.guild_id, lora.name, interaction.user.id)
        except RegistryError as exc:
            await send_private(interaction, str(exc))
            return
        await send_private(interaction, f"Removed **{lora.name}** from this server's registry.")

    async def lora_edit_submit(self, interaction: discord.Interaction[Any], lora_id: int, fields: Mapping[str, str]) -> None:
        """Apply the Edit modal of a LoRA card; the admin check is repeated for the submit."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None or not is_admin(interaction):
            await send_private(interaction, "Only members with the **Manage Server** permission can change LoRAs.")
            return
        lora = await self.services.registry.loras.get_by_id(interaction.guild_id, lora_id)
        if lora is None:
            await send_private(interaction, "This LoRA is not registered any more.")
            return
        # Only what the admin changed: a prefilled text cut to Discord's limit, sent back as
        # it was, must not overwrite the whole value (e.g. a 10,000-character description).
        prefilled = views.lora_edit_values(lora)
        edited = {key: value for key, value in fields.items() if key in prefilled and value != prefilled[key]}
        if not edited:
            await send_private(interaction, "Nothing changed.", embed=embeds.lora_card(lora, show_file=True))
            return
        changes, problems = lora_changes(**edited)
        if problems:
            await send_private(interaction, embeds.problems_message(problems))
            return
        try:
            updated = await self.services.registry.loras.update(interaction.guild_id, lora.name, interaction.user.id, **changes)
        except RegistryError as exc:
            await send_private(interaction, str(exc))
            return
        await send_private(interaction, "Saved.", embed=embeds.lora_card(updated, show_file=True))


def lora_changes(
    *,
    trigger_words: str | None = None,
    default_weight: str | None = None,
    weight_range: str | None = None,
    category: str | None = None,
    description: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Turn an admin's typed fields into registry changes, or explain what is wrong."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    if trigger_words is not None:
        changes["trigger_words"] = tuple(w.strip() for w in trigger_words.split(",") if w.strip())
    if default_weight:
        try:
            changes["default_weight"] = float(default_weight)
        except ValueError:
            problems.append(f"Default weight `{default_weight}` is not a number; write it like `0.8`.")
    if weight_range:
        low, sep, high = weight_range.replace("–", "-").replace(" to ", "-").rpartition("-")
        try:
            if not sep or not low:
                raise ValueError
            changes["recommended_min"], changes["recommended_max"] = float(low), float(high)
        except ValueError:
            problems.append(f"Range `{weight_range}` should look like `0.5-1.0`.")
    if category:
        try:
            changes["category"] = Category(category.strip().lower())
        except ValueError:
            problems.append(
                f"Category `{category}` is not one of: " + ", ".join(c.value for c in Category) + "."
            )
    if description is not None:
        changes["description"] = description
    return changes, problems
