"""Syncing slash commands only when they changed.

Discord allows 200 command creates a day per server and rate-limits bulk overwrites, and a
global sync takes a while to reach every client; syncing on every start (a crash loop, a
deploy) wastes both. The tree's payload (exactly what discord.py would send) is hashed and
kept in the database per scope and application: a start whose tree hashes the same as the
last sync sends nothing. ``python -m bot --sync`` forces a sync, for when the commands were
changed elsewhere (another deployment with the same application, the Developer Portal).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import discord
from discord import app_commands

from bot.registry.privacy import guild_scope

log = logging.getLogger(__name__)

GLOBAL_SCOPE = "global"


def tree_hash(tree: app_commands.CommandTree[Any], guild: discord.abc.Snowflake | None = None) -> str:
    """sha256 of the commands ``tree.sync(guild=guild)`` would send, in a stable order."""
    payload = sorted(
        (command.to_dict(tree) for command in tree.get_commands(guild=guild)),
        key=lambda c: (c.get("type", 1), c["name"]),
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


async def sync_if_changed(
    tree: app_commands.CommandTree[Any],
    registry: Any,
    application_id: int,
    *,
    guilds: tuple[int, ...] = (),
    force: bool = False,
) -> list[app_commands.AppCommand] | None:
    """Sync globally (or to each of ``guilds``, copying the global commands there, for
    development) when the tree differs from the last sync; None when nothing was sent."""
    synced: list[app_commands.AppCommand] | None = None
    targets: list[discord.Object | None] = [discord.Object(g) for g in guilds] or [None]
    for guild in targets:
        if guild is not None:
            tree.copy_global_to(guild=guild)
        scope = GLOBAL_SCOPE if guild is None else guild_scope(guild.id)
        digest = tree_hash(tree, guild)
        if not force and await registry.sync_state.last_hash(scope, application_id) == digest:
            log.info("commands unchanged since the last sync (%s); not syncing", scope)
            continue
        synced = await tree.sync(guild=guild)
        await registry.sync_state.record(scope, application_id, digest)
        log.info("synced %d commands (%s)", len(synced), scope)
    return synced
