"""Where a click or a modal submit goes: each feature's cog registers the buttons and modal
kinds it owns here when it loads, and takes them back when it unloads.

Buttons are :class:`discord.ui.DynamicItem` (see :mod:`bot.ui.views`) and modals are read from
their payload, so both reach the right feature after a restart; this table is what lets
``bot.ui.views`` stay a module of UI shapes that imports no feature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import discord

from bot.operator.access import AccessPolicy
from bot.operator.guild_lifecycle import NOT_ENABLED
from bot.ui import views
from bot.ui.common import send_private

log = logging.getLogger(__name__)

#: A button's work: the interaction and the DynamicItem rebuilt from its custom id.
ButtonWork = Callable[[discord.Interaction[Any], Any], Awaitable[None]]
#: A modal's work: the interaction, the modal's kind and target id, its text inputs.
ModalWork = Callable[[discord.Interaction[Any], str, int, Mapping[str, str]], Awaitable[None]]


async def refuse_unlisted(interaction: discord.Interaction[Any]) -> None:
    """The answer a server outside the allowlist gets: no choices, no files, a polite note."""
    if interaction.type == discord.InteractionType.autocomplete:
        if not interaction.response.is_done():
            await interaction.response.autocomplete([])
        return
    await send_private(interaction, NOT_ENABLED.format(guild_id=interaction.guild_id))


class Routes:
    """Buttons and modal kinds -> the feature work behind them, guarded the same way."""

    def __init__(self, access: Callable[[], AccessPolicy]) -> None:
        self._access = access
        self._buttons: dict[type[Any], ButtonWork] = {}
        self._modals: dict[str, ModalWork] = {}

    def add_button(self, item: type[Any], work: ButtonWork) -> None:
        self._buttons[item] = work

    def remove_button(self, item: type[Any]) -> None:
        self._buttons.pop(item, None)

    def add_modal(self, kind: str, work: ModalWork) -> None:
        self._modals[kind] = work

    def remove_modal(self, kind: str) -> None:
        self._modals.pop(kind, None)

    async def guarded(self, interaction: discord.Interaction[Any], work: Awaitable[None]) -> None:
        """Run a button's or modal's work; a bug answers the member instead of leaving
        "thinking…" forever (discord.py only logs errors raised in component callbacks)."""
        if not self._access().guild_allowed(interaction.guild_id):
            work.close()  # type: ignore[attr-defined]  # never started: no "never awaited" warning
            await refuse_unlisted(interaction)
            return
        try:
            await work
        except Exception:
            log.exception("interaction %s (%s) failed", interaction.id, interaction.data and interaction.data.get("custom_id"))
            await send_private(interaction, "Something went wrong on the bot's side; the error was logged. Please try again.")

    async def press(self, interaction: discord.Interaction[Any], item: discord.ui.DynamicItem[Any]) -> None:
        """A click on one of our buttons, after discord.py rebuilt ``item`` from its custom id."""
        work = self._buttons.get(type(item))
        if work is None:
            await send_private(interaction, "This button belongs to a part of the bot that is not running right now.")
            return
        await self.guarded(interaction, work(interaction, item))

    async def submit(self, interaction: discord.Interaction[Any]) -> bool:
        """Route a submit of one of our modals (see :mod:`bot.ui.views`); False if not ours."""
        parsed = views.parse_modal_submit(dict(interaction.data or {}))
        if parsed is None:
            return False
        kind, target, fields = parsed
        work = self._modals.get(kind)
        if work is None:
            await send_private(interaction, "This form belongs to a part of the bot that is not running right now.")
            return True
        await self.guarded(interaction, work(interaction, kind, target, fields))
        return True
