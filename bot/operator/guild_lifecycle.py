"""Joining, leaving and forgetting servers: the allowlist at the door, data deleted on departure.

- Invited to a server that is not on the operator's allowlist: a polite note in the
  server's system channel, and the bot leaves when the operator asked for that.
- Removed from a server (GUILD_DELETE without ``unavailable``, or a removal that happened
  while the bot was offline, noticed at start): the departure is recorded, and once the
  grace period has passed every row of that server is deleted. Re-inviting the bot within
  the grace period keeps everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import discord

from bot.operator.access import AccessPolicy

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0
#: How often departed servers are checked for deletion (also once at every start).
PURGE_INTERVAL_S = 3600.0

NOT_ENABLED = (
    "Atelier is a private installation and is not enabled for this server, so its commands "
    "will not do anything here. If you expected it to work, ask the person who runs this bot "
    "to add this server (its id is {guild_id}) to their allowed servers."
)


class Host(Protocol):
    """What the lifecycle reads of the client: its servers, the registry, the operator's rules."""

    @property
    def registry(self) -> Any: ...

    @property
    def guilds(self) -> Sequence[discord.Guild]: ...

    @property
    def access(self) -> AccessPolicy: ...


class GuildLifecycle:
    def __init__(
        self,
        bot: Host,
        *,
        grace_s: float = 30 * DAY_S,
        leave_other_guilds: bool = False,
        purge_interval_s: float = PURGE_INTERVAL_S,
    ) -> None:
        self.bot = bot
        self.grace_s = grace_s
        self.leave_other_guilds = leave_other_guilds
        self.purge_interval_s = purge_interval_s
        self._task: asyncio.Task[None] | None = None

    # --- events --------------------------------------------------------------------------

    async def ready(self) -> None:
        """At (re)connection: servers left while offline, servers to leave, the purge loop."""
        registry = self.bot.registry
        present = {guild.id for guild in self.bot.guilds}
        for guild_id in await registry.privacy.known_guilds() - present:
            await registry.privacy.record_departure(guild_id)
        for guild_id in present & set(await registry.privacy.departures()):
            await registry.privacy.cancel_departure(guild_id)
        for guild in list(self.bot.guilds):
            if not self.bot.access.guild_allowed(guild.id):
                await self._refuse(guild)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._purge_loop(), name="atelier-data-purge")

    async def joined(self, guild: discord.Guild) -> None:
        if await self.bot.registry.privacy.cancel_departure(guild.id):
            log.info("back in server %s within the grace period; its data is kept", guild.id)
        if not self.bot.access.guild_allowed(guild.id):
            await self._refuse(guild, notify=True)

    async def removed(self, guild: discord.Guild) -> None:
        await self.bot.registry.privacy.record_departure(guild.id)
        log.info(
            "removed from server %s; its data will be deleted in %.1f days unless re-invited",
            guild.id,
            self.grace_s / DAY_S,
        )

    async def purge_now(self) -> list[int]:
        purged = await self.bot.registry.purge_departed(self.grace_s)
        pictures = getattr(self.bot, "pictures", None)  # input images (bot.pictures)
        for guild_id in purged:
            if pictures is not None:
                await pictures.forget_guild(guild_id)
            log.info("deleted the data of server %s (removed more than the grace period ago)", guild_id)
        if pictures is not None:
            await pictures.prune()  # inputs past their age limit or the size cap
        return purged

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- internals -----------------------------------------------------------------------

    async def _refuse(self, guild: discord.Guild, *, notify: bool = False) -> None:
        log.warning("server %s (%s) is not in allowed_guilds", guild.id, guild.name)
        if notify:
            channel = guild.system_channel
            if channel is not None and channel.permissions_for(guild.me).send_messages:
                with contextlib.suppress(discord.HTTPException):
                    await channel.send(
                        NOT_ENABLED.format(guild_id=guild.id),
                        allowed_mentions=discord.AllowedMentions.none(),
                    )
        if self.leave_other_guilds:
            try:
                await guild.leave()
                log.info("left server %s: not in allowed_guilds", guild.id)
            except discord.HTTPException as exc:
                log.warning("could not leave server %s: %s", guild.id, exc)

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge_now()
            except Exception:  # a failed purge is retried next round, never kills the bot
                log.exception("deleting the data of departed servers failed")
            await asyncio.sleep(self.purge_interval_s)
