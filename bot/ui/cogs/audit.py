"""``/audit`` (admin): who changed what in this server's registry and settings, newest first.

Every admin change is written to the audit log in the same transaction as the change itself
(see :mod:`bot.registry.audit`), so this list is complete.
"""

from __future__ import annotations

import json
from typing import Any

import discord
from discord import app_commands

from bot.registry import AuditEntry
from bot.ui import embeds
from bot.ui.cogs.cog import FeatureCog
from bot.ui.common import admin_only, send_private
from bot.ui.features import features_of

#: Characters of one entry's details in the list.
DETAILS_PREVIEW = 240


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return embeds.truncate(text or "∅", 60)


def describe(entry: AuditEntry) -> str:
    """One line: when, who, what, and the changed fields as ``field: before → after``."""
    who = f"<@{entry.actor_id}>" if entry.actor_id else "a former member"
    head = f"<t:{int(entry.at)}:R> · {who} · `{entry.action}` **{embeds.truncate(entry.target, 80)}**"
    details = entry.details or {}
    if entry.action.endswith(".update"):
        parts = [
            f"{field}: {_value(change[0])} → {_value(change[1])}"
            for field, change in details.items()
            if isinstance(change, list) and len(change) == 2
        ]
    else:
        parts = [f"{key}: {_value(value)}" for key, value in details.items()]
    return head + (f"\n  {embeds.truncate('; '.join(parts), DETAILS_PREVIEW)}" if parts else "")


@app_commands.command(name="audit", description="Show who changed what in this server's Atelier setup (admin)")
@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
@admin_only()
@app_commands.describe(
    member="Only this member's changes",
    entry="Only changes to this model, LoRA or `settings`",
    count="How many entries (newest first)",
)
async def audit(
    interaction: discord.Interaction[Any],
    member: discord.User | None = None,
    entry: app_commands.Range[str, 1, 100] | None = None,
    count: app_commands.Range[int, 1, 30] = 15,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    entries = await features_of(interaction).registry.audit.entries(
        interaction.guild_id, count, actor_id=member.id if member else None, target=entry
    )
    title = "Audit log" + (f" · {member.display_name}" if member else "") + (f" · {entry}" if entry else "")
    lines = [describe(e) for e in entries]
    await send_private(interaction, embed=embeds.list_embed(title, lines, empty="No changes recorded yet."))


class AuditCog(FeatureCog, name="audit"):
    feature_commands = (audit,)
