"""The Discord client: the composition root that builds the services and adds the features.

:class:`AtelierBot` builds the long-lived services (:class:`bot.services.Services`: registry,
engines, job dispatcher, poster, fetcher, access rules, image safety) and the shared flows
(:class:`bot.ui.features.Features`), then adds one cog per feature
(:mod:`bot.ui.cogs`), each given what it uses. Nothing imports this module but
:mod:`bot.assembly`; the layers below never reach back up to it.
``python -m bot``, the demo and the tests all build it through :mod:`bot.assembly`, from the
same settings, and start it exactly as production does (tests against the local Discord double).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import (
    DEFAULT_STALL_LIMIT_S,
    Dispatcher,
    EngineLink,
    EnginePool,
    JobStore,
    Limits,
    Poster,
)
from bot.operator.access import AccessPolicy, GuildFiles
from bot.operator.command_sync import sync_if_changed
from bot.operator.guild_lifecycle import DAY_S, PURGE_INTERVAL_S, GuildLifecycle
from bot.operator.safety import ImageSafety
from bot.pictures import PictureStore
from bot.services import Services
from bot.sources.actions import SourceActions
from bot.sources.civitai import CivitaiClient
from bot.sources.fetcher import Fetcher, FetchSettings
from bot.ui import views
from bot.ui.actions import Actions
from bot.ui.cogs import COGS
from bot.ui.common import send_private
from bot.ui.features import Features
from bot.ui.image_buttons import ImageButtons
from bot.ui.image_reading import ImageReader
from bot.ui.lora_cards import LoraCards
from bot.ui.pictures import PictureActions
from bot.ui.recipe_actions import RecipeActions
from bot.ui.routes import Routes, refuse_unlisted
from engine.client import EngineClient

log = logging.getLogger(__name__)


class AtelierTree(app_commands.CommandTree["AtelierBot"]):
    """Turns any unexpected command error into a short private answer instead of silence."""

    async def interaction_check(self, interaction: discord.Interaction[AtelierBot]) -> bool:
        """Commands are registered guild-only, but a stale client can still send one from a DM;
        and servers outside the operator's allowlist get a polite refusal and nothing else."""
        if interaction.guild_id is None:
            if interaction.type == discord.InteractionType.application_command:
                await send_private(
                    interaction,
                    "Atelier works inside a server channel, not in direct messages. Run the command in a server.",
                )
            return False
        if not interaction.client.access.guild_allowed(interaction.guild_id):
            await refuse_unlisted(interaction)
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


class AtelierBot(commands.Bot):
    """The bot. ``registry`` is an open :class:`bot.registry.Registry`.

    ``engines`` lists the engines (one per GPU or machine), each an
    :class:`~bot.jobs.EngineLink` or a bare client. Jobs go to whichever is free; one-off
    questions and downloads go to a healthy one (see :attr:`engine`). Build it with
    :func:`bot.assembly.build_bot`, which gives every setting to the part it belongs to.
    ``access`` holds the operator's rules (allowed servers, file shares, owners; default:
    everything open, as for a single-server install), ``safety`` the image check run
    before every post (default: none). ``force_sync`` syncs commands even when unchanged.
    ``civitai`` and ``fetch`` are Civitai's API and the operator's fetching rules (default:
    civitai.com, fetching off; see bot.sources).
    """

    def __init__(
        self,
        *,
        registry: Any,
        engines: Sequence[EngineLink | EngineClient],
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
        sync_commands: bool = True,
        force_sync: bool = False,
        access: AccessPolicy | None = None,
        safety: ImageSafety | None = None,
        data_grace_s: float = 30 * DAY_S,
        leave_other_guilds: bool = False,
        purge_interval_s: float = PURGE_INTERVAL_S,
        civitai: CivitaiClient | None = None,
        fetch: FetchSettings | None = None,
        fetch_poll_interval: float = 0.5,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("chunk_guilds_at_startup", False)
        # Nothing the bot sends pings anyone unless that one message says so: prompts and
        # names are echoed in messages and may contain @everyone or role mentions.
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        # Slash commands only: a prefix that is only a mention, no message content intent and
        # no message events, so no text command can ever run (discord.py's documented way).
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, tree_cls=AtelierTree, help_command=None, **options
        )
        self.registry = registry
        links = [link if isinstance(link, EngineLink) else EngineLink(link) for link in engines]
        if not links:
            raise ValueError("AtelierBot needs at least one engine in engines=")
        self.engines = EnginePool(links, depth=engine_depth)
        self.sync_guilds = sync_guilds
        self.sync_commands = sync_commands
        self.force_sync = force_sync
        policy = access or AccessPolicy()
        self.safety = safety or ImageSafety(None)
        self.lifecycle = GuildLifecycle(
            self,
            grace_s=data_grace_s,
            leave_other_guilds=leave_other_guilds,
            purge_interval_s=purge_interval_s,
        )
        self.poster = Poster(
            self, result_view=lambda job: views.detached(views.result_view()), result_retry_s=result_retry
        )
        fetcher = Fetcher(
            registry=registry,
            # Asked at each use, like ``self.engine``: the healthy engine of the moment, never
            # one fixed at construction (production once handed the fetcher None here).
            engine=lambda: self.engines.primary,
            civitai=civitai or CivitaiClient(),
            access=lambda: self.access,
            settings=fetch or FetchSettings(),
            poll_interval=fetch_poll_interval,
        )
        #: Input images of image-to-image recipes, kept beside the database (bot.pictures).
        self.pictures = PictureStore(Path(getattr(registry, "path", "var/atelier.sqlite3")).parent / "inputs")
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
            on_result=lambda job, message, seconds: self.actions.record_result(job, message, seconds),
        )
        self.dispatcher.inputs = self.pictures
        self.services = Services(
            client=self,
            registry=registry,
            engines=self.engines,
            access=policy,
            safety=self.safety,
            lifecycle=self.lifecycle,
            poster=self.poster,
            dispatcher=self.dispatcher,
            fetcher=fetcher,
        )
        #: LoRAs from Civitai: /lora add source:, "Look up on Civitai", AIRs in /imagine.
        self.sources = SourceActions(self.services, status_interval=status_interval)
        self.actions = Actions(self.services, self.sources)
        self.recipes = RecipeActions(self.services, self.actions)
        self.image_buttons = ImageButtons(self.services, self.actions)
        self.image_buttons.recipes = self.recipes
        self.lora_cards = LoraCards(self.services, self.sources)
        self.image_reader = ImageReader(self.services, self.recipes)
        self.routes = Routes(lambda: self.access)
        self.picture_actions = PictureActions(self.services, self.actions)
        self.features = Features(
            self.services, self.actions, self.recipes, self.sources, self.routes,
            image_buttons=self.image_buttons, lora_cards=self.lora_cards, image_reader=self.image_reader,
            pictures=self.picture_actions,
        )
        self.synced: list[app_commands.AppCommand] = []

    @property
    def engine(self) -> EngineClient:
        """An engine for one-off questions (inspecting a file, listing files)."""
        return self.engines.primary

    @property
    def access(self) -> AccessPolicy:
        """The operator's rules; kept in the services, where every feature reads them."""
        return self.services.access

    @access.setter
    def access(self, policy: AccessPolicy) -> None:
        self.services.access = policy

    async def setup_hook(self) -> None:
        for cog in COGS:
            await self.add_cog(cog(self, self.features))
        if self.registry is not None:
            self.dispatcher.store = JobStore(self.registry.database)
        await self.dispatcher.start()
        if not self.access.owners and self.application is not None:
            # No owners configured: the application's owner, or its team's members.
            team = self.application.team
            owners = [m.id for m in team.members] if team else [self.application.owner.id]
            self.access = self.access.with_owners(owners)
        if self.sync_commands and self.application_id is not None:
            synced = await sync_if_changed(
                self.tree, self.registry, self.application_id, guilds=self.sync_guilds, force=self.force_sync
            )
            if synced is not None:
                self.synced = synced

    def files_for(self, guild_id: int) -> GuildFiles:
        """The engine's files as this server may see them (see bot.operator.access)."""
        return self.services.files_for(guild_id)

    async def on_ready(self) -> None:
        await self.lifecycle.ready()

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.lifecycle.joined(guild)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await self.lifecycle.removed(guild)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Modal submits are routed here from their payload, not through discord.py's
        in-memory modal store, so they survive restarts and concurrent modals (see bot.ui.views)."""
        if interaction.type == discord.InteractionType.modal_submit:
            await self.routes.submit(interaction)

    async def close(self) -> None:
        await self.lifecycle.close()
        await self.sources.close()
        await self.dispatcher.close()
        await super().close()
