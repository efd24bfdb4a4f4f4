"""One cog per feature: it owns the feature's app commands, buttons and modal kinds.

A cog is built with the client and the typed :class:`~bot.ui.features.Features` it
uses, and on load puts its commands on the client's tree, its DynamicItem buttons on the
client and its buttons' and modals' work in the route table; on unload it takes them back,
so a feature can be added, removed or tested on its own. The commands themselves stay
module-level objects (tests read their options and limits without a client).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from discord import AppCommandType, app_commands
from discord.ext import commands

from bot.ui.features import Features
from bot.ui.routes import ButtonWork, ModalWork

AppCommand = app_commands.Command[Any, ..., Any] | app_commands.Group | app_commands.ContextMenu


class FeatureCog(commands.Cog):
    #: The feature's top-level app commands (module-level objects).
    feature_commands: ClassVar[tuple[AppCommand, ...]] = ()

    def __init__(self, bot: commands.Bot, features: Features) -> None:
        self.bot = bot
        self.features = features

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        """The DynamicItem classes this feature answers, with their work."""
        return {}

    def modals(self) -> Mapping[str, ModalWork]:
        """The modal kinds (see bot.ui.views.MODAL_ID) this feature answers, with their work."""
        return {}

    async def cog_load(self) -> None:
        for command in self.feature_commands:
            self.bot.tree.add_command(command)
        buttons = self.buttons()
        if buttons:
            self.bot.add_dynamic_items(*buttons)
        for item, work in buttons.items():
            self.features.routes.add_button(item, work)
        for kind, work in self.modals().items():
            self.features.routes.add_modal(kind, work)

    async def cog_unload(self) -> None:
        for command in self.feature_commands:
            self.bot.tree.remove_command(command.name, type=getattr(command, "type", AppCommandType.chat_input))
        buttons = self.buttons()
        if buttons:
            self.bot.remove_dynamic_items(*buttons)
        for item in buttons:
            self.features.routes.remove_button(item)
        for kind in self.modals():
            self.features.routes.remove_modal(kind)
