"""The Discord client: command tree, persistent buttons, the dispatcher and the engine link.

Everything long-lived hangs off :class:`AtelierBot` so that commands, buttons and modals
reach the registry, the engine client and the job queue through ``interaction.client``.
Tests build one with a temporary registry and an engine URL, point discord.py at the local
Discord double, and start it exactly as production does.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot import views
from bot.actions import Actions
from bot.commands.common import send_private
from bot.dispatch import DEFAULT_STALL_LIMIT_S, Dispatcher, Job
from bot.recipe_actions import RecipeActions
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
    """The bot. ``registry`` is an open :class:`bot.registry.Registry`."""

    def __init__(
        self,
        *,
        registry: Any,
        engine: EngineClient,
        sync_guilds: tuple[int, ...] = (),
        status_interval: float = 2.0,
        max_pending: int = 500,
        stall_limit: float = DEFAULT_STALL_LIMIT_S,
        retry_wait: float = 60.0,
        sync_commands: bool = True,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("chunk_guilds_at_startup", False)
        super().__init__(intents=intents, **options)
        self.registry = registry
        self.engine = engine
        self.sync_guilds = sync_guilds
        self.sync_commands = sync_commands
        self.tree = AtelierTree(self)
        self.actions = Actions(self)
        self.recipes = RecipeActions(self)
        self.dispatcher = Dispatcher(
            self,
            engine,
            status_interval=status_interval,
            max_pending=max_pending,
            stall_limit=stall_limit,
            retry_wait=retry_wait,
            view_factory=lambda job: views.status_view(job.id),
            result_view=lambda job: views.result_view(),
            on_result=self.actions.record_result,
        )
        self.synced: list[app_commands.AppCommand] = []

    async def setup_hook(self) -> None:
        from bot.commands import register_all

        register_all(self.tree)
        self.add_dynamic_items(*views.DYNAMIC_ITEMS)
        self.dispatcher.start()
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

    async def submit_job(self, job: Job, *, user_limit: int) -> Job:
        return await self.dispatcher.submit(job, user_limit=user_limit)
