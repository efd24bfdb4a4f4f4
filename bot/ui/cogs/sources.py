"""Civitai sources as a feature: the "Apply" button under a LoRA look-up.

``/lora add source:`` and the look-up button are the LoRA feature's commands and buttons; the
fetching itself is :class:`bot.sources.actions.SourceActions`. This cog owns what only the
sources flow posts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.ui import views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.routes import ButtonWork


class SourcesCog(FeatureCog, name="sources"):
    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {
            views.CivitaiApplyButton: lambda i, item: f.sources.apply_lookup(i, item.lora_id, item.version_id),
        }
