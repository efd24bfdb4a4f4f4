"""Slash commands and their cogs, one module per feature.

Each feature module defines its app commands as module-level objects (tests inspect names,
options and limits without starting a client) and a :class:`~bot.commands.cog.FeatureCog`
that puts them, its buttons and its modals on a client. ``register_all`` adds every
feature's commands to a bare tree, for those tests.
"""

from __future__ import annotations

from typing import Any

from discord import app_commands


def register_all(tree: app_commands.CommandTree[Any]) -> None:
    from bot.commands.cogs import COGS

    for cog in COGS:
        for command in cog.feature_commands:
            tree.add_command(command)
