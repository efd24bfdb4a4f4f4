"""The typed bundle a feature's cog and its commands work with.

:class:`Features` is the services (:class:`bot.services.Services`) plus the flows several
features share: generation (:class:`bot.ui.actions.Actions`), recipes and Civitai sources, the
buttons under an image and on a LoRA card, reading images, and the table of buttons and modals (:class:`bot.ui.routes.Routes`). Each cog receives it
when the client adds the cog; the module-level app commands read it from the interaction
through :func:`features_of` (discord.py calls them with nothing else), typed, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import discord

from bot.jobs import Dispatcher, EnginePool, Poster
from bot.operator.access import AccessPolicy, GuildFiles
from bot.operator.guild_lifecycle import GuildLifecycle
from bot.operator.safety import ImageSafety
from bot.registry import Registry
from bot.services import Services
from bot.sources.actions import SourceActions
from bot.ui.actions import Actions
from bot.ui.image_buttons import ImageButtons
from bot.ui.image_reading import ImageReader
from bot.ui.lora_cards import LoraCards
from bot.ui.recipe_actions import RecipeActions
from bot.ui.routes import Routes
from engine.client import EngineClient


@dataclass(eq=False)
class Features:
    services: Services
    actions: Actions
    recipes: RecipeActions
    sources: SourceActions
    routes: Routes
    image_buttons: ImageButtons
    lora_cards: LoraCards
    image_reader: ImageReader
    #: Pictures in: /imagine image:, "Use as starting image", Vary and Upscale (bot.ui.pictures).
    pictures: Any = None

    @property
    def client(self) -> discord.Client:
        """The Discord connection, for messages and channels no interaction carries."""
        return self.services.client

    @property
    def registry(self) -> Registry:
        return self.services.registry

    @property
    def access(self) -> AccessPolicy:
        return self.services.access

    @property
    def safety(self) -> ImageSafety:
        return self.services.safety

    @property
    def dispatcher(self) -> Dispatcher:
        return self.services.dispatcher

    @property
    def engines(self) -> EnginePool:
        return self.services.engines

    @property
    def engine(self) -> EngineClient:
        return self.services.engine

    @property
    def poster(self) -> Poster:
        return self.services.poster

    @property
    def lifecycle(self) -> GuildLifecycle:
        return self.services.lifecycle

    def files_for(self, guild_id: int) -> GuildFiles:
        return self.services.files_for(guild_id)


class FeatureHost(Protocol):
    """A client that carries the features (``bot.app.AtelierBot``), without importing it."""

    @property
    def features(self) -> Features: ...


def features_of(interaction: discord.Interaction[Any]) -> Features:
    host: FeatureHost = interaction.client  # type: ignore[assignment]
    return host.features
