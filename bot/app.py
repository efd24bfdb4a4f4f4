"""The Discord client: command tree, persistent buttons, the job dispatcher and the engines.

Everything long-lived hangs off :class:`AtelierBot` so that commands, buttons and modals
reach the registry, the engine client and the job queue through ``interaction.client``.
Tests build one with a temporary registry and an engine URL, point discord.py at the local
Discord double, and start it exactly as production does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands

from bot import views
from bot.actions import Actions
from bot.commands.common import send_private
from bot.jobs import (
    DEFAULT_STALL_LIMIT_S,
    Dispatcher,
    EngineLink,
    EnginePool,
    JobStore,
    Limits,
    Poster,
)
from bot.jobs.poster import BeforePost
from engine.client import EngineClient

log = logging.getLogger(__name__)


class AtelierTree(app_commands.CommandTree["AtelierBot"]):
    """Turns any unexpected command error into a short private answer instead of silence."""

    async def interaction_check(self, interaction: discord.Interaction[AtelierBot]) -> bool:
        """Commands are registered guild-only, but a stale client can still send one from a DM."""
        if interaction.guild_id is None:
            if interaction.type == discord.InteractionType.application_command:
                await send_private(
                    interaction,
                    "Atelier works inside a server channel, not in direct messages. Run the command in a server.",
                )
            return False
        return True

    async def on_error(
        self, interaction: discord.Interaction[AtelierBot], error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.NoPrivateMessage):
            text = "Atelier works inside a server channel, not in direct messages. Run the command in a server."
        elif isinstance(error, app_commands.MissingPermissions):
            text = "Only members with the **Manage Server** permission can use this command."
        elif isinstance(error, app_commands.CheckFailure):
            text = str(error) or "You can't use this command here."
        else:
            log.exception("command %s failed", interaction.command and interaction.command.qualified_name, exc_info=error)
            text = "Something went wrong on the bot's side; the error was logged. Please try again."
        await send_private(interaction, text)


class AtelierBot(discord.Client):
    """The bot. ``registry`` is an open :class:`bot.registry.Registry`.

    ``engine`` is the one-engine form; ``engines`` lists several (one per GPU or machine),
    each an :class:`~bot.jobs.EngineLink` or a bare client. Jobs go to whichever is free.
    """

    def __init__(
        self,
        *,
        registry: Any,
        engine: EngineClient | None = None,
        engines: Sequence[EngineLink | EngineClient] = (),
        sync_guilds: tuple[int, ...] = (),
        status_interval: float = 2.0,
        max_pending: int = 2000,
        server_share: float = 0.5,
        engine_depth: int = 2,
        max_batch: int = 4,
        affinity_window: int = 8,
        stall_limit: float = DEFAULT_STALL_LIMIT_S,
        retry_wait: float = 300.0,
        result_retry: float = 15 * 60.0,
        before_post: BeforePost | None = None,
        sync_commands: bool = True,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("chunk_guilds_at_startup", False)
        super().__init__(intents=intents, **options)
        self.registry = registry
        links = [link if isinstance(link, EngineLink) else EngineLink(link) for link in engines]
        if engine is not None:
            links.insert(0, EngineLink(engine))
        if not links:
            raise ValueError("AtelierBot needs an engine: pass engine= or engines=")
        self.engines = EnginePool(links, depth=engine_depth)
        self.sync_guilds = sync_guilds
        self.sync_commands = sync_commands
        self.tree = AtelierTree(self)
        self.actions = Actions(self)
        self.poster = Poster(
            self, result_view=lambda job: views.detached(views.result_view()), before_post=before_post,
            result_retry_s=result_retry,
        )  # fmt: skip
        self.dispatcher = Dispatcher(
            self,
            self.engines,
            self.poster,
            limits=Limits(max_pending=max_pending, server_share=server_share),
            status_interval=status_interval,
            stall_limit=stall_limit,
            retry_wait=retry_wait,
            max_batch=max_batch,
            affinity_window=affinity_window,
            on_result=self.actions.record_result,
        )
        self.synced: list[app_commands.AppCommand] = []

    @property
    def engine(self) -> EngineClient:
        """An engine for one-off questions (inspecting a file, listing files)."""
        return self.engines.primary

    async def setup_hook(self) -> None:
        from bot.commands import register_all

        register_all(self.tree)
        self.add_dynamic_items(*views.DYNAMIC_ITEMS)
        if self.registry is not None:
            self.dispatcher.store = JobStore(self.registry.database)
        await self.dispatcher.start()
        if self.sync_commands:
            if self.sync_guilds:
                for guild_id in self.sync_guilds:
                    guild = discord.Object(guild_id)
                    self.tree.copy_global_to(guild=guild)
                    self.synced = await self.tree.sync(guild=guild)
            else:
                self.synced = await self.tree.sync()
            log.info("synced %d commands", len(self.synced))

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Modal submits are routed here from their payload, not through discord.py's
        in-memory modal store, so they survive restarts and concurrent modals (see bot.views)."""
        if interaction.type == discord.InteractionType.modal_submit:
            await self.actions.modal_submit(interaction)

    async def close(self) -> None:
        await self.dispatcher.close()
        await super().close()
