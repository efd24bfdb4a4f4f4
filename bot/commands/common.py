"""Checks and small helpers shared by the commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

if TYPE_CHECKING:
    from bot.app import AtelierBot

ADMIN_PERMISSION = "manage_guild"


def bot_of(interaction: discord.Interaction[Any]) -> AtelierBot:
    return interaction.client  # type: ignore[return-value]


def is_admin(interaction: discord.Interaction[Any]) -> bool:
    """Manage Server, read from the permissions Discord resolved for this interaction.

    The command's default permission hides it from others, but server admins can override
    that in Integrations settings, so the bot checks again every time.
    """
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.administrator)


def admin_only() -> Any:
    """Runtime admin check, raising MissingPermissions that the tree turns into a reply."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not is_admin(interaction):
            raise app_commands.MissingPermissions([ADMIN_PERMISSION])
        return True

    return app_commands.check(predicate)


def can_manage_messages(interaction: discord.Interaction[Any]) -> bool:
    permissions = interaction.permissions
    return bool(permissions.manage_messages or permissions.administrator)


def nsfw_channel(interaction: discord.Interaction[Any]) -> bool:
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def role_ids(interaction: discord.Interaction[Any]) -> frozenset[int]:
    user = interaction.user
    roles = getattr(user, "_roles", None)
    if roles is not None:
        return frozenset(int(r) for r in roles)
    return frozenset(r.id for r in getattr(user, "roles", ()))


def to_choices(choices: Any) -> list[app_commands.Choice[str]]:
    """Registry choices -> Discord choices, never more than 25, labels ≤ 100, values ≤ 100."""
    out: list[app_commands.Choice[str]] = []
    for choice in list(choices)[:25]:
        out.append(app_commands.Choice(name=str(choice.name)[:100], value=str(choice.value)[:100]))
    return out
