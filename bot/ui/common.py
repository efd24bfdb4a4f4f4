"""Checks and small helpers shared by the commands."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.ui.embeds import CONTENT_LIMIT, truncate

log = logging.getLogger(__name__)

ADMIN_PERMISSION = "manage_guild"


def is_admin(interaction: discord.Interaction[Any]) -> bool:
    """Manage Server, read from the permissions Discord resolved for this interaction.

    The command's default permission hides it from others, but server admins can override
    that in Integrations settings, so the bot checks again every time.
    """
    permissions = interaction.permissions
    if permissions.manage_guild or permissions.administrator:
        return True
    # The bot's owners (see bot.operator.access) administer it in every server it serves.
    access = getattr(interaction.client, "access", None)
    return access is not None and access.is_owner(interaction.user.id)


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


async def send_private(interaction: discord.Interaction[Any], text: str | None = None, **kwargs: Any) -> None:
    """Answer privately whether or not the interaction was already acknowledged.

    A failed answer is logged, not raised: the caller has nothing better to tell the member.
    Text is cut to Discord's 2000 characters: refusals quote what the member typed, and a
    string option may be 6000 characters long.
    """
    if text:
        text = truncate(text, CONTENT_LIMIT)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text or None, ephemeral=True, **kwargs)  # type: ignore[arg-type]
        else:
            await interaction.response.send_message(text or None, ephemeral=True, **kwargs)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


def to_choices(choices: Any) -> list[app_commands.Choice[str]]:
    """Registry choices -> Discord choices, never more than 25, labels ≤ 100, values ≤ 100."""
    out: list[app_commands.Choice[str]] = []
    for choice in list(choices)[:25]:
        out.append(app_commands.Choice(name=str(choice.name)[:100], value=str(choice.value)[:100]))
    return out


def affected_recipes(uses: Any, *, shown: int = 10) -> str:
    """The sentence naming saved recipes that used a removed model or LoRA (or nothing)."""
    uses = list(uses)
    if not uses:
        return ""
    listed = ", ".join(
        (f"the recipe book's **{truncate(u.name, 60)}**" if u.in_book else f"<@{u.user_id}>'s **{truncate(u.name, 60)}**")
        for u in uses[:shown]
    )
    more = f" and {len(uses) - shown} more" if len(uses) > shown else ""
    return (
        f"\n{len(uses)} saved recipe(s) used it and will be refused until it is registered again "
        f"under the same name: {listed}{more}."
    )
