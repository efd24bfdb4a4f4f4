"""The Discord side of LoRA sources: ``/lora add source:``, "Look up on Civitai", and AIRs in
``/imagine`` (with on-demand fetching for the roles a server names).

Long work answers in one private message that is edited as it goes (looked up, downloading with
a percentage, verifying, registered), at most every ``status_interval`` seconds as the job
status messages are. An interaction token lives 15 minutes; a download that outlasts it gets
its last word as a channel message that pings only the admin who asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import discord

from bot.registry.models import EmbeddingEntry, LoraEntry, RegistryError
from bot.registry.text import name_key
from bot.services import Services
from bot.sources.civitai import CivitaiError, CivitaiVersion
from bot.sources.fetcher import AlreadyRegistered, Fetched, Fetcher, Stage, describe_plan
from bot.sources.plan import FetchPlan, FetchRefused, base_model_of, registry_name, size_text
from bot.sources.refs import SourceRef, looks_like_air, parse_air
from bot.ui import embeds, views
from bot.ui.common import is_admin, role_ids, send_private
from engine import arch as architectures

if TYPE_CHECKING:
    from bot.registry.catalog import Catalog
    from bot.request.parse import ImagineRequest

log = logging.getLogger(__name__)

#: Interaction tokens last 15 minutes; past this age, answers go to the channel instead.
TOKEN_LIFETIME_S = 14 * 60
_BAR = 12


def progress_text(stage: Stage, plan: FetchPlan | None, received: int, total: int, source: str) -> str:
    if stage == "looking_up" or plan is None:
        return f"🔎 Looking up `{embeds.truncate(source, 200)}` on Civitai…"
    what = describe_plan(plan)
    if stage == "downloading":
        if total > 0:
            share = min(1.0, received / total)
            filled = round(share * _BAR)
            bar = "▰" * filled + "▱" * (_BAR - filled)
            return f"⬇️ Downloading {what}\n{bar} {share:.0%} ({size_text(received)} of {size_text(total)})"
        return f"⬇️ Downloading {what} ({size_text(received)} so far)"
    if stage == "verifying":
        return f"🔐 Checking {what}: sha256 and safetensors header…"
    return f"📝 Registering {what}…"


class _ProgressMessage:
    """Edits the interaction's original answer, no more often than ``interval`` seconds."""

    def __init__(self, interaction: discord.Interaction[Any], source: str, interval: float) -> None:
        self.interaction = interaction
        self.source = source
        self.interval = interval
        self._last = 0.0
        self._text = ""
        self.broken = False

    def expired(self) -> bool:
        return time.time() - self.interaction.created_at.timestamp() > TOKEN_LIFETIME_S

    async def __call__(self, stage: Stage, plan: FetchPlan | None, received: int, total: int) -> None:
        text = progress_text(stage, plan, received, total, self.source)
        now = time.monotonic()
        urgent = stage != "downloading" or received == 0
        if self.broken or self.expired() or text == self._text or (not urgent and now - self._last < self.interval):
            return
        self._last, self._text = now, text
        try:
            await self.interaction.edit_original_response(content=text)
        except discord.HTTPException as exc:
            log.warning("could not show fetch progress: %s", exc)
            self.broken = True

    async def finish(self, text: str, **kwargs: Any) -> None:
        """The last word: in place when the token still lives, else in the channel."""
        text = embeds.truncate(text, embeds.CONTENT_LIMIT)
        if not self.expired() and not self.broken:
            try:
                await self.interaction.edit_original_response(content=text, **kwargs)
                return
            except discord.HTTPException as exc:
                log.warning("could not edit the fetch answer: %s", exc)
        channel = self.interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            mention = self.interaction.user.mention
            try:
                await channel.send(
                    embeds.truncate(f"{mention} {text}", embeds.CONTENT_LIMIT),
                    embed=kwargs.get("embed"),
                    allowed_mentions=discord.AllowedMentions(users=[self.interaction.user], everyone=False, roles=False),
                )
            except discord.HTTPException as exc:
                log.warning("could not post the fetch answer: %s", exc)


def _registered_text(fetched: Fetched, source: str) -> str:
    entry = fetched.entry
    how = "It was in the LoRA folder already, so nothing was downloaded." if fetched.reused else "Downloaded and verified (sha256)."
    if isinstance(entry, EmbeddingEntry):
        head = f"✅ Registered the embedding **{entry.name}** from Civitai (`{embeds.truncate(source, 200)}`). {how} Members use it by writing `{entry.name}` in the prompt or negative."
    else:
        head = f"✅ Registered **{entry.name}** from Civitai (`{embeds.truncate(source, 200)}`). {how} Members can pick it by name or by its AIR."
    notes = "".join(f"\n• {note}" for note in fetched.notes)
    return head + notes + "\nCheck the card; press Edit to correct trigger words, weights or category."


def lookup_changes(lora: LoraEntry, version: CivitaiVersion, taken: Collection[str]) -> dict[str, Any]:
    """What "Look up on Civitai" proposes for a LoRA registered by hand: Civitai's name (when
    free), trigger words, family, AIR, and a description and preview where it has none. The
    admin sees the list and confirms; the file's own facts (architecture, hashes) stay."""
    changes: dict[str, Any] = {}
    name = registry_name(version, None, taken)
    if name and name_key(name) != name_key(lora.name):
        changes["name"] = name
    words = tuple(dict.fromkeys(w for w in version.trained_words if len(w) <= 200))[:25]
    if words and words != lora.trigger_words:
        changes["trigger_words"] = words
    architecture, family = base_model_of(version.base_model)
    if family != "unknown" and family != lora.family and architecture in (lora.architecture, "unknown"):
        changes["family"] = family
    if version.base_model and version.base_model != lora.base_model:
        changes["base_model"] = version.base_model
    variant = architectures.from_base_model(version.base_model)[1]
    if variant is not None and variant != lora.variant and architecture == lora.architecture:
        changes["variant"] = variant
    air = _air_text(version, lora.architecture)
    if air and air != lora.source:
        changes["source"] = air
    if not lora.description and version.description:
        changes["description"] = version.description
    preview = version.preview()
    if not lora.preview_url and preview:
        changes["preview_url"] = preview
    if version.nsfw and not lora.nsfw:
        changes["nsfw"] = True
    return changes


def _air_text(version: CivitaiVersion, architecture: str) -> str | None:
    try:
        air = parse_air(version.air) if version.air else parse_air(f"civitai:{version.model_id}@{version.id}")
    except ValueError:
        return None
    return str(air.canonical(type="lora", architecture=architecture))


_LABELS = {"name": "Name", "trigger_words": "Trigger words", "family": "Family", "source": "AIR",
           "description": "Description", "preview_url": "Preview", "nsfw": "NSFW",
           "base_model": "Civitai base model", "variant": "Variant"}  # fmt: skip


class SourceActions:
    def __init__(self, services: Services, *, status_interval: float = 2.0) -> None:
        self.services = services
        self.fetcher: Fetcher = services.fetcher
        self.status_interval = status_interval

    async def close(self) -> None:
        await self.fetcher.close()

    # --- /lora add source: -----------------------------------------------------------------

    async def add(
        self, interaction: discord.Interaction[Any], source: str, *, name: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """Fetch and register ``source`` for an admin; the interaction is deferred (private)."""
        assert interaction.guild_id is not None
        message = _ProgressMessage(interaction, source, self.status_interval)
        try:
            fetched = await self.fetcher.fetch(
                interaction.guild_id, interaction.user.id, source, name=name, progress=message, overrides=overrides,
            )
        except AlreadyRegistered as exc:
            await message.finish(_already_text(exc.entry))
            return
        except FetchRefused as exc:
            await message.finish(exc.as_text("Nothing was fetched"))
            return
        entry = fetched.entry
        if isinstance(entry, LoraEntry):
            await message.finish(
                _registered_text(fetched, source),
                embed=embeds.lora_card(entry, show_file=True),
                view=views.lora_card_view(entry.id or 0, lookup=False),
            )
        else:
            await message.finish(_registered_text(fetched, source))

    # --- Look up on Civitai ----------------------------------------------------------------

    async def lookup(self, interaction: discord.Interaction[Any], lora: LoraEntry) -> None:
        """Find a hand-registered file on Civitai by its sha256 and propose what it adds."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not lora.sha256:
            await send_private(interaction, f"**{lora.name}** has no recorded sha256, so it cannot be looked up.")
            return
        try:
            version = await self.fetcher.lookup(SourceRef("hash", lora.sha256, hash=lora.sha256.upper()))
        except CivitaiError as exc:
            text = (
                f"Civitai does not know this file (sha256 `{lora.sha256[:12]}…`): it may not come from there, or be a re-save."
                if exc.reason == "not_found"
                else f"The look-up failed: {exc.message}."
            )
            await send_private(interaction, text)
            return
        if not any(f.sha256 == lora.sha256 for f in version.files):
            await send_private(interaction, "Civitai answered with a version whose files do not have this sha256; nothing to apply.")
            return
        assert interaction.guild_id is not None
        taken = set((await self.services.registry.catalogs.get(interaction.guild_id)).loras)
        changes = lookup_changes(lora, version, taken)
        title = f"Civitai: {version.model_name} · {version.name}"
        embed = discord.Embed(title=embeds.truncate(title, 256), url=version.page_url, colour=embeds.ACCENT)
        embed.add_field(name="Base model", value=version.base_model or "unknown", inline=True)
        embed.add_field(name="Type", value=version.model_type or "unknown", inline=True)
        if not changes:
            embed.description = f"**{lora.name}** already has everything Civitai knows about it."
            await send_private(interaction, embed=embeds.fit_embed(embed))
            return
        for key, value in changes.items():
            shown = ", ".join(value) if isinstance(value, tuple) else ("yes" if value is True else str(value))
            embed.add_field(name=f"{_LABELS[key]} (new)", value=embeds.truncate(shown, 1000) or "—", inline=False)
        await send_private(
            interaction,
            f"Found **{lora.name}** on Civitai. Apply these changes?",
            embed=embeds.fit_embed(embed),
            view=views.civitai_apply_view(lora.id or 0, version.id),
        )

    async def apply_lookup(self, interaction: discord.Interaction[Any], lora_id: int, version_id: int) -> None:
        """The admin confirmed: look the version up again (the button's ids are not trusted)
        and apply what it adds, if its files still include this LoRA's file."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None or not is_admin(interaction):
            await send_private(interaction, "Only members with the **Manage Server** permission can change LoRAs.")
            return
        registry = self.services.registry
        lora = await registry.loras.get_by_id(interaction.guild_id, lora_id)
        if lora is None:
            await send_private(interaction, "This LoRA is not registered any more.")
            return
        try:
            version = await self.fetcher.civitai.version(version_id)
        except CivitaiError as exc:
            await send_private(interaction, f"The look-up failed: {exc.message}.")
            return
        if not lora.sha256 or not any(f.sha256 == lora.sha256 for f in version.files):
            await send_private(interaction, "That Civitai version does not contain this LoRA's file; nothing was changed.")
            return
        taken = set((await registry.catalogs.get(interaction.guild_id)).loras)
        changes = lookup_changes(lora, version, taken)
        if not changes:
            await send_private(interaction, "Nothing to change.", embed=embeds.lora_card(lora, show_file=True))
            return
        try:
            updated = await registry.loras.update(interaction.guild_id, lora.name, interaction.user.id, **changes)
        except RegistryError as exc:
            await send_private(interaction, str(exc))
            return
        await send_private(interaction, f"Updated **{updated.name}** from Civitai.", embed=embeds.lora_card(updated, show_file=True))

    # --- AIRs in /imagine ------------------------------------------------------------------

    def may_fetch_on_demand(self, interaction: discord.Interaction[Any], catalog: Catalog) -> bool:
        roles = set(catalog.settings.fetch_roles)
        assert interaction.guild_id is not None
        return bool(roles & role_ids(interaction)) and self.fetcher.refusal(interaction.guild_id) is None

    async def fetch_missing(self, interaction: discord.Interaction[Any], request: ImagineRequest, catalog: Catalog) -> Catalog | None:
        """Fetch the AIRs of a request this server does not have, when the member's role may;
        the fresh catalog, the same one when there is nothing to fetch, None when refused (the
        member has been told why)."""
        missing = [
            lora.name for lora in request.loras
            if looks_like_air(lora.name) and catalog.lora(lora.name) is None and not catalog.loras_by_air(lora.name)
        ]  # fmt: skip
        if not missing or not self.may_fetch_on_demand(interaction, catalog):
            return catalog
        assert interaction.guild_id is not None
        for air in dict.fromkeys(missing):
            message = _ProgressMessage(interaction, air, self.status_interval)
            try:
                await self.fetcher.fetch(interaction.guild_id, interaction.user.id, air, progress=message)
            except AlreadyRegistered:
                continue  # fetched meanwhile by someone else
            except FetchRefused as exc:
                await message.finish(exc.as_text(f"`{embeds.truncate(air, 200)}` could not be fetched, so nothing was queued"))
                return None
        return await self.services.registry.catalogs.get(interaction.guild_id)


def _already_text(entry: LoraEntry | EmbeddingEntry) -> str:
    kind = "embedding" if isinstance(entry, EmbeddingEntry) else "LoRA"
    where = "`/embedding list`" if kind == "embedding" else f"`/lora info name:{entry.name}`"
    return f"This server has it already: the {kind} **{entry.name}** (same Civitai version or the same file). See {where}."
