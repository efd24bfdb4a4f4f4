"""Slash commands, one module per top-level command.

``register_all`` adds them to the bot's tree; each module exposes its command objects so
tests can inspect names, options and limits without starting a client.
"""

from __future__ import annotations

from typing import Any

from discord import app_commands


def register_all(tree: app_commands.CommandTree[Any]) -> None:
    from bot.commands import (
        audit,
        embedding,
        imagine,
        lora,
        model,
        privacy,
        queue,
        recipe,
        settings,
    )

    for command in (
        imagine.imagine, lora.lora, model.model, embedding.embedding, settings.settings, queue.queue,
        recipe.recipe, recipe.remix_this_image, audit.audit, privacy.privacy,
    ):  # fmt: skip
        tree.add_command(command)
