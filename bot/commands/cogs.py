"""Every feature of the bot, in the order the client adds them."""

from __future__ import annotations

from bot.commands.audit import AuditCog
from bot.commands.cog import FeatureCog
from bot.commands.embedding import EmbeddingsCog
from bot.commands.imagine import ImagineCog
from bot.commands.lora import LorasCog
from bot.commands.model import ModelsCog
from bot.commands.privacy import PrivacyCog
from bot.commands.queue import QueueCog
from bot.commands.recipe import RecipesCog
from bot.commands.settings import SettingsCog
from bot.commands.sources import SourcesCog

COGS: tuple[type[FeatureCog], ...] = (
    ImagineCog, LorasCog, ModelsCog, EmbeddingsCog, SettingsCog, QueueCog, RecipesCog, AuditCog, PrivacyCog,
    SourcesCog,
)  # fmt: skip
