"""Slash commands, one module per top-level command.

``register_all`` adds them to the bot's tree; each module exposes its command objects so
tests can inspect names, options and limits without starting a client.
"""

from __future__ import annotations

from typing import Any

from discord import app_commands


def register_all(tree: app_commands.CommandTree[Any]) -> None:
    from bot.commands import embedding, imagine, lora, model, queue, recipes, settings

    for command in (imagine.imagine, lora.lora, model.model, embedding.embedding, settings.settings, queue.queue, recipes.recipes):
        tree.add_command(command)
