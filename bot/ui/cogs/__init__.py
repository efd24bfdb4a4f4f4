"""One cog per feature, each owning its slash commands, buttons and modals.

Each feature module defines its app commands as module-level objects (tests read names,
options and limits without starting a client) and a :class:`~bot.ui.cogs.cog.FeatureCog`
that puts them, its buttons and its modals on a client. :data:`COGS` is every feature, in
the order the client adds them; ``register_all`` adds every feature's commands to a bare
tree, for those tests.
"""

from __future__ import annotations

from typing import Any

from discord import app_commands

from bot.ui.cogs.audit import AuditCog
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.embedding import EmbeddingsCog
from bot.ui.cogs.imagine import ImagineCog
from bot.ui.cogs.lora import LorasCog
from bot.ui.cogs.model import ModelsCog
from bot.ui.cogs.picture import PictureCog
from bot.ui.cogs.privacy import PrivacyCog
from bot.ui.cogs.queue import QueueCog
from bot.ui.cogs.recipe import RecipesCog
from bot.ui.cogs.settings import SettingsCog
from bot.ui.cogs.sources import SourcesCog

COGS: tuple[type[FeatureCog], ...] = (
    ImagineCog, LorasCog, ModelsCog, EmbeddingsCog, SettingsCog, QueueCog, RecipesCog, AuditCog, PrivacyCog,
    SourcesCog, PictureCog,
)  # fmt: skip


def register_all(tree: app_commands.CommandTree[Any]) -> None:
    for cog in COGS:
        for command in cog.feature_commands:
            tree.add_command(command)
