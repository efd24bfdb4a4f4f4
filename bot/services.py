"""The long-lived services every feature works with, handed to each one by type.

The client builds them once (see :class:`bot.app.AtelierBot`) and gives this bundle to the
handlers and cogs, so no feature reaches into the client for them and nothing imports the
client: the dependency rule is UI (cogs, buttons) -> services -> domain (registry, jobs,
sources, engine protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.jobs import Dispatcher, EnginePool, Poster
from bot.operator.access import AccessPolicy, GuildFiles
from bot.operator.guild_lifecycle import GuildLifecycle
from bot.operator.safety import ImageSafety
from bot.registry import Registry
from bot.sources.fetcher import Fetcher
from engine.client import EngineClient


@dataclass(eq=False)
class Services:
    """What the features use. ``access`` is replaced at start when the owners are learnt
    from the application, so it is read from here at each use, never copied."""

    client: discord.Client
    registry: Registry
    engines: EnginePool
    access: AccessPolicy
    safety: ImageSafety
    lifecycle: GuildLifecycle
    poster: Poster
    dispatcher: Dispatcher
    fetcher: Fetcher

    @property
    def engine(self) -> EngineClient:
        """An engine for one-off questions (inspecting a file, listing files)."""
        return self.engines.primary

    def files_for(self, guild_id: int) -> GuildFiles:
        """The engine's files as this server may see them (see bot.operator.access)."""
        return GuildFiles(self.engine, self.access, guild_id)
