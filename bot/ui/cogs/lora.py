"""``/lora``: register, edit, remove, look up, search and bookmark LoRAs.

``/lora add`` registers at once and answers with the LoRA's card and an Edit button rather
than asking for a confirmation first: everything it fills in (architecture, hashes, trigger
words) comes from the file itself, a pending confirmation would be state that can expire
or be lost in a restart, and the Edit button (which survives restarts) covers the case
where the admin wants to correct a guess. Discord's default permissions apply to a whole
top-level command, so the admin subcommands (add, edit, remove, enable, disable) rely on
the run-time check. ``edit`` is built from :data:`LORA_EDIT_FIELDS`, one line per field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from bot.registry import ARCHITECTURES, Category, LoraEntry, RegistryError
from bot.ui import embeds, views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.edit_fields import (
    CLEAR_WORDS,
    EditField,
    build_edit_command,
    build_toggle_commands,
    comma_list,
    text_or_clear,
)
from bot.ui.cogs.files import inspect_new_file, unregistered_file_choices
from bot.ui.common import (
    admin_only,
    affected_recipes,
    is_admin,
    nsfw_channel,
    send_private,
    to_choices,
)
from bot.ui.features import features_of
from bot.ui.profiles import evidence_for, profile_choices, profile_option, proposal
from bot.ui.routes import ButtonWork, ModalWork
from engine.families import FAMILIES, family_label

lora = app_commands.Group(name="lora", description="Find, bookmark and manage this server's LoRAs", guild_only=True)

CATEGORY_CHOICES = [app_commands.Choice(name=c.value, value=c.value) for c in Category]
ARCH_CHOICES = [app_commands.Choice(name=a, value=a) for a in ARCHITECTURES if a != "unknown"]
FAMILY_CHOICES = [app_commands.Choice(name=family_label(f), value=f) for f in FAMILIES]
SORT_CHOICES = [
    app_commands.Choice(name="newest", value="newest"),
    app_commands.Choice(name="most used", value="most_used"),
    app_commands.Choice(name="name", value="name"),
]


async def registered_lora_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    bot = features_of(interaction)
    choices = await bot.registry.loras.autocomplete(
        interaction.guild_id,
        current,
        nsfw_ok=await bot.actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction)),
    )
    return to_choices(choices)


async def any_lora_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Admins also need disabled LoRAs, so this searches everything.

    Autocomplete runs before the command's admin check, and ``/lora`` is visible to every
    member, so members get nothing here rather than the names of disabled or NSFW LoRAs.
    """
    if interaction.guild_id is None or not is_admin(interaction):
        return []
    entries = await features_of(interaction).registry.loras.search(interaction.guild_id, current, sort="name", limit=25)
    return [app_commands.Choice(name=e.name[:100], value=e.name[:100]) for e in entries[:25]]


async def unregistered_file_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    return await unregistered_file_choices(interaction, "lora", current)


@lora.command(name="add", description="Register a LoRA file, or fetch one from Civitai by AIR, link or hash (admin)")
@admin_only()
@app_commands.describe(
    file="LoRA file in the engine's folder (leave empty to fetch `source` from Civitai)",
    name="Name members will type (default: from the file, or Civitai's)",
    category="What kind of LoRA it is",
    trigger_words="Comma-separated trigger words (default: read from the file, or Civitai's)",
    default_weight="Weight used when a member gives none",
    nsfw="Whether it is NSFW (Civitai's NSFW rating always counts)",
    source="Civitai AIR (civitai:120096@135931), link or file hash; fetched when no file is given",
    description="A short description",
    family="Model family it was trained for (default: read from the file)",
    profile="Sampling profile of a speed LoRA (default: read from the file's name and metadata)",
)
@app_commands.choices(category=CATEGORY_CHOICES, family=FAMILY_CHOICES, profile=profile_choices("lora"))
@app_commands.autocomplete(file=unregistered_file_autocomplete)
async def lora_add(
    interaction: discord.Interaction[Any],
    file: str | None = None,
    name: app_commands.Range[str, 1, 100] | None = None,
    category: str | None = None,
    trigger_words: str | None = None,
    default_weight: app_commands.Range[float, -10.0, 10.0] | None = None,
    nsfw: bool | None = None,
    source: app_commands.Range[str, 1, 1000] | None = None,
    description: str | None = None,
    family: str | None = None,
    profile: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    overrides: dict[str, Any] = {}
    if profile is not None:
        overrides.update(profile_option()(profile, interaction))
    if category is not None:
        overrides["category"] = Category(category)
    if nsfw is not None:
        overrides["nsfw"] = nsfw
    if trigger_words is not None:
        overrides["trigger_words"] = tuple(w.strip() for w in trigger_words.split(",") if w.strip())
    if default_weight is not None:
        overrides["default_weight"] = default_weight
    if description:
        overrides["description"] = description
    if family:
        overrides["family"] = family
    if file is None:
        if not source:
            await send_private(
                interaction,
                "Give `file` (a LoRA file the engine already has) or `source` (a Civitai AIR such as "
                "`civitai:120096@135931`, a Civitai link or a file hash) to fetch it.",
            )
            return
        await bot.sources.add(interaction, source, name=name, overrides=overrides)
        return
    info = await inspect_new_file(interaction, "lora", file)
    if info is None:
        return
    overrides.setdefault("nsfw", False)
    if source:
        overrides["source"] = source
    if not family and info.base_model_sha256:
        # Trained on a model this server has: that model's family is the LoRA's.
        for known in await bot.registry.models.all(interaction.guild_id):
            if known.sha256 == info.base_model_sha256 and known.family != "unknown":
                overrides["family"] = known.family
    try:
        entry = LoraEntry.from_file_info(info, name=name, **overrides)
        if entry.speed_profile and category is None:
            entry = replace(entry, category=Category.SPEED)
        added = await bot.registry.loras.add(interaction.guild_id, entry, interaction.user.id)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    note = f"Registered **{added.name}**."
    if added.speed_profile:
        evidence = None if profile else evidence_for(info.path, info.metadata, None, "lora", added.speed_profile)
        note += proposal(added.speed_profile, evidence, "/lora edit")
    if added.architecture == "unknown":
        note += " I could not tell its architecture from the file; it will not match any model until that is fixed."
    await send_private(
        interaction,
        note + " Check the card; press Edit to correct trigger words, weights or category, or Look up on Civitai to fill in what Civitai knows.",
        embed=embeds.lora_card(added, show_file=True),
        view=views.lora_card_view(added.id or 0, lookup=bool(added.sha256)),
    )


def _category(value: str, _interaction: discord.Interaction[Any]) -> dict[str, Any]:
    return {"category": Category(value)}


def _preview(value: str, _interaction: discord.Interaction[Any]) -> dict[str, Any]:
    # A link, not an uploaded attachment: Discord's attachment URLs expire after a day.
    return {"preview_url": None if value.strip().lower() in CLEAR_WORDS else value}


#: ``/lora edit``'s options: one line per field (option, registry field, type, description).
LORA_EDIT_FIELDS: tuple[EditField, ...] = (
    EditField("new_name", "name", app_commands.Range[str, 1, 100], "Rename it"),
    EditField("category", "category", str, "Category", choices=CATEGORY_CHOICES, convert=_category),
    EditField("trigger_words", "trigger_words", str, "Comma-separated trigger words (replaces the current ones; `none` clears)", convert=comma_list("trigger_words")),
    EditField("default_weight", "default_weight", app_commands.Range[float, -10.0, 10.0], "Default weight"),
    EditField("min_weight", "recommended_min", app_commands.Range[float, -10.0, 10.0], "Lowest recommended weight"),
    EditField("max_weight", "recommended_max", app_commands.Range[float, -10.0, 10.0], "Highest recommended weight"),
    EditField("nsfw", "nsfw", bool, "NSFW"),
    EditField("enabled", "enabled", bool, "Whether members can use it"),
    EditField("description", "description", str, "Description (`none` clears it)", convert=text_or_clear("description")),
    EditField("source", "source", str, "Civitai AIR or URL (`none` clears it)", convert=text_or_clear("source", None)),
    EditField("family", "family", str, "Model family it was trained for", choices=FAMILY_CHOICES),
    EditField("profile", "speed_profile", str, "Sampling profile of a speed LoRA (`none` removes it)", choices=profile_choices("lora"), convert=profile_option()),
    EditField("preview", "preview_url", app_commands.Range[str, 1, 2000], "Link (https://…) to a preview image shown on the card; `none` removes it", convert=_preview),
)


async def _apply_lora_edit(interaction: discord.Interaction[Any], name: str, changes: dict[str, Any]) -> None:
    assert interaction.guild_id is not None
    try:
        updated = await features_of(interaction).registry.loras.update(interaction.guild_id, name, interaction.user.id, **changes)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Updated **{updated.name}**.", embed=embeds.lora_card(updated, show_file=True))


lora_edit = build_edit_command(
    lora,
    description="Change a registered LoRA (admin)",
    target_description="The LoRA to change",
    target_autocomplete=any_lora_autocomplete,
    fields=LORA_EDIT_FIELDS,
    apply=_apply_lora_edit,
)


async def _set_lora_enabled(interaction: discord.Interaction[Any], name: str, enabled: bool) -> str:
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    return (await registry.loras.set_enabled(interaction.guild_id, name, interaction.user.id, enabled)).name


lora_enable, lora_disable = build_toggle_commands(
    lora, noun="LoRA", autocomplete=any_lora_autocomplete, set_enabled=_set_lora_enabled
)


@lora.command(name="remove", description="Remove a LoRA from this server's registry (admin)")
@admin_only()
@app_commands.describe(name="The LoRA to remove")
@app_commands.autocomplete(name=any_lora_autocomplete)
async def lora_remove(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    entry = await registry.loras.get(interaction.guild_id, name)
    uses = await registry.saved_recipes.using(interaction.guild_id, lora=entry) if entry else []
    try:
        await registry.loras.remove(interaction.guild_id, name, interaction.user.id)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    shown = entry.name if entry else name
    await send_private(interaction, f"Removed **{shown}**. Images already posted keep their recipes." + affected_recipes(uses))


@lora.command(name="info", description="Show a LoRA's card")
@app_commands.describe(name="The LoRA")
@app_commands.autocomplete(name=registered_lora_autocomplete)
async def lora_info(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    entry = await registry.loras.get(interaction.guild_id, name)
    if entry is None:
        catalog = await registry.catalogs.get(interaction.guild_id)
        hints = catalog.suggest_loras(name)
        tip = (" Did you mean " + ", ".join(f"`{h}`" for h in hints) + "?") if hints else ""
        await send_private(interaction, f"No LoRA named `{embeds.truncate(name, 100)}` in this server.{tip}")
        return
    if entry.nsfw and await features_of(interaction).actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction)) is False:
        # The card still says NSFW; only its picture waits for a channel where NSFW is allowed.
        entry = replace(entry, preview_url=None)
    marks = {b.name for b in await registry.loras.bookmarked_by(interaction.guild_id, interaction.user.id)}
    admin = is_admin(interaction)
    extra: dict[str, Any] = {"view": views.lora_card_view(entry.id or 0, lookup=bool(entry.sha256))} if admin else {}
    await send_private(
        interaction, embed=embeds.lora_card(entry, bookmarked=entry.name in marks, show_file=admin), **extra
    )


def _lora_line(entry: LoraEntry) -> str:
    triggers = f" · {', '.join(entry.trigger_words[:3])}" if entry.trigger_words else ""
    state = "" if entry.enabled else " · disabled"
    family = f" · {family_label(entry.family)}" if entry.family != "unknown" else ""
    return f"**{entry.name}** · {entry.architecture}{family} · {entry.category.value} · {entry.uses} uses{triggers}{state}"


@lora.command(name="search", description="Search LoRAs by name, trigger word or description")
@app_commands.describe(
    query="Words to look for (empty lists everything)",
    architecture="Only LoRAs for this architecture",
    category="Only this category",
    sort="Order of results",
    bookmarked="Only your bookmarks",
    family="Only LoRAs of this model family (Pony, Illustrious, ...)",
)
@app_commands.choices(architecture=ARCH_CHOICES, category=CATEGORY_CHOICES, sort=SORT_CHOICES, family=FAMILY_CHOICES)
async def lora_search(
    interaction: discord.Interaction[Any],
    query: app_commands.Range[str, 0, 200] = "",
    architecture: str | None = None,
    category: str | None = None,
    sort: str = "newest",
    bookmarked: bool = False,
    family: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    nsfw = await bot.actions.nsfw_ok(interaction.guild_id, nsfw_channel(interaction))
    entries = await bot.registry.loras.search(
        interaction.guild_id,
        query,
        architecture=architecture,
        category=category,
        nsfw=False if nsfw is False else None,
        enabled=None,
        bookmarked_by=interaction.user.id if bookmarked else None,
        sort=sort,  # type: ignore[arg-type]
        limit=25,
        family=family,
    )
    title = f"LoRAs matching “{query}”" if query else "LoRAs"
    await send_private(interaction, embed=embeds.list_embed(title, [_lora_line(e) for e in entries], empty="No LoRA matches."))


@lora.command(name="bookmark", description="Bookmark a LoRA, or remove the bookmark")
@app_commands.describe(name="The LoRA")
@app_commands.autocomplete(name=registered_lora_autocomplete)
async def lora_bookmark(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    try:
        added = await registry.loras.bookmark(interaction.guild_id, interaction.user.id, name)
        if not added:
            await registry.loras.unbookmark(interaction.guild_id, interaction.user.id, name)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Bookmarked **{name}**." if added else f"Removed the bookmark on **{name}**.")


@lora.command(name="bookmarks", description="List your bookmarked LoRAs")
async def lora_bookmarks(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    entries = await features_of(interaction).registry.loras.bookmarked_by(interaction.guild_id, interaction.user.id)
    await send_private(
        interaction,
        embed=embeds.list_embed(
            "Your bookmarks", [_lora_line(e) for e in entries], empty="No bookmarks yet: try `/lora bookmark`."
        ),
    )


class LorasCog(FeatureCog, name="loras"):
    feature_commands = (lora,)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {views.LoraCardButton: lambda i, item: f.lora_cards.lora_card_button(i, item.action, item.lora_id)}

    def modals(self) -> Mapping[str, ModalWork]:
        f = self.features
        return {"loraedit": lambda i, kind, target, fields: f.lora_cards.lora_edit_submit(i, target, fields)}
