"""``/model``: the base models a server offers.

``list`` and ``info`` are for everyone; ``add``, ``edit``, ``remove``, ``enable`` and
``disable`` for admins (run-time check: Discord's default permissions apply to a whole
top-level command). ``edit`` is built from :data:`MODEL_EDIT_FIELDS`, one line per field.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.registry import ModelEntry, RegistryError
from bot.registry.checks import MAX_CFG, MAX_STEPS
from bot.registry.models import kind_description
from bot.ui import embeds
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.edit_fields import (
    EditField,
    build_edit_command,
    build_toggle_commands,
    channel_set,
    size,
    text_or_clear,
)
from bot.ui.cogs.files import inspect_new_file, read_server_file, unregistered_file_choices
from bot.ui.common import admin_only, affected_recipes, is_admin, send_private, to_choices
from bot.ui.features import features_of
from bot.ui.profiles import describe, evidence_for, profile_choices, profile_option, proposal
from engine import arch as architectures
from engine.families import FAMILIES, family_label
from engine.prediction import PREDICTION_LABELS
from engine.recipe.sampler_names import SAMPLERS

FAMILY_CHOICES = [app_commands.Choice(name=family_label(f), value=f) for f in FAMILIES]


def variant_choices() -> list[app_commands.Choice[str]]:
    """Every architecture's variants (from its module in engine.arch), one choice per name:
    a name two architectures share (FLUX.1 dev, FLUX.2 dev) is one choice labelled with
    both, and is checked against the file's architecture when it is used."""
    labels: dict[str, list[str]] = {}
    for spec in architectures.ARCHITECTURES.values():
        for name, found in spec.variants.items():
            labels.setdefault(name, []).append(found.label)
    return [app_commands.Choice(name=" / ".join(shown)[:100], value=name) for name, shown in labels.items()][:25]


VARIANT_CHOICES = variant_choices()


def variant_refusal(architecture: str, variant: str, file: str) -> str | None:
    """Why ``variant`` cannot be the variant of a file of ``architecture``, or None."""
    spec = architectures.get(architecture)
    if spec is not None and variant in spec.variants:
        return None
    label = architectures.label(architecture)
    known = ", ".join(f"`{v.label}`" for v in spec.variants.values()) if spec is not None else ""
    offered = f" {label}'s variants are {known}." if known else f" {label} has no variants to pick."
    return f"`{embeds.truncate(file, 100)}` is a {label} model, so `{variant}` is not one of its variants.{offered}"
PREDICTION_CHOICES = [app_commands.Choice(name=label, value=value or "auto") for value, label in PREDICTION_LABELS.items()]

model = app_commands.Group(name="model", description="The base models of this server", guild_only=True)


async def model_name_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    return to_choices(await features_of(interaction).registry.models.autocomplete(interaction.guild_id, current))


async def model_file_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    return await unregistered_file_choices(interaction, "model", current)


async def any_model_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    """Every model, disabled ones included, for the admin subcommands; members get nothing."""
    if interaction.guild_id is None or not is_admin(interaction):
        return []
    needle = current.lower()
    models = await features_of(interaction).registry.models.all(interaction.guild_id)
    names = [m.name for m in models if needle in m.name.lower()]
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:25]]


def model_card(entry: ModelEntry, *, show_file: bool = False) -> discord.Embed:
    embed = discord.Embed(title=f"Model · {entry.name}", colour=embeds.ACCENT, description=entry.description or None)
    embed.add_field(name="Architecture", value=entry.architecture, inline=True)
    spec = architectures.get(entry.architecture)
    found = spec.variants.get(entry.variant) if spec is not None and entry.variant else None
    if found is not None:
        edits = found.capabilities is not None and "edit" in found.capabilities
        embed.add_field(name="Variant", value=found.label + (" · edit model (`/edit`)" if edits else ""), inline=True)
    embed.add_field(name="Default size", value=f"{entry.default_width}×{entry.default_height}", inline=True)
    embed.add_field(name="Default steps", value=str(entry.default_steps), inline=True)
    embed.add_field(name="Default CFG", value=f"{entry.default_cfg:g}", inline=True)
    embed.add_field(name="Default sampler", value=entry.default_sampler, inline=True)
    if entry.default_negative:
        embed.add_field(name="Default negative", value=embeds.truncate(entry.default_negative, 300), inline=False)
    embed.add_field(name="Status", value="enabled" if entry.enabled else "disabled", inline=True)
    embed.add_field(name="Family", value=family_label(entry.family), inline=True)
    embed.add_field(name="Clip skip", value=str(entry.default_clip_skip), inline=True)
    embed.add_field(name="Prediction", value=PREDICTION_LABELS.get(entry.prediction_type, entry.prediction_type), inline=True)
    if entry.nsfw:
        embed.add_field(name="NSFW", value="yes", inline=True)
    if entry.allowed_channel_ids:
        embed.add_field(
            name="Channels", value=" ".join(f"<#{c}>" for c in sorted(entry.allowed_channel_ids)), inline=False
        )
    # Members see the file's hash, never where it lies on the operator's disk.
    file_lines = [f"`{entry.file}`"] if show_file else []
    if entry.autov2:
        file_lines.append(f"AutoV2 `{entry.autov2}`")
    if file_lines:
        embed.add_field(name="File", value="\n".join(file_lines), inline=False)
    if entry.vae and show_file:
        embed.add_field(name="VAE", value=f"`{entry.vae}`", inline=False)
    if entry.speed_profile:
        embed.add_field(name="Sampling profile", value=describe(entry.speed_profile), inline=False)
    if entry.fast_with:
        embed.add_field(name="Fast mode", value=f"with `{entry.fast_with}`", inline=False)
    return embeds.fit_embed(embed)


@model.command(name="list", description="List the models of this server")
async def model_list(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    models = await bot.registry.models.all(interaction.guild_id)
    default = (await bot.registry.settings.get(interaction.guild_id)).default_model
    lines = [
        f"**{m.name}** · {m.architecture} · {m.default_width}×{m.default_height}"
        + (" · default" if default and m.name == default else "")
        + ("" if m.enabled else " · disabled")
        for m in models
    ]
    await send_private(interaction, embed=embeds.list_embed("Models", lines, empty="No models yet: an admin adds one with `/model add`."))


@model.command(name="info", description="Show a model's details")
@app_commands.describe(name="The model")
@app_commands.autocomplete(name=model_name_autocomplete)
async def model_info(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    entry = await registry.models.get(interaction.guild_id, name)
    if entry is None:
        hints = (await registry.catalogs.get(interaction.guild_id)).suggest_models(name)
        tip = (" Did you mean " + ", ".join(f"`{h}`" for h in hints) + "?") if hints else ""
        await send_private(interaction, f"No model named `{embeds.truncate(name, 100)}` here.{tip}")
        return
    await send_private(interaction, embed=model_card(entry, show_file=is_admin(interaction)))


@model.command(name="add", description="Register a model file the engine can see (admin)")
@admin_only()
@app_commands.describe(
    file="Model file or folder in the engine's model folder",
    name="Name members will pick (default: from the file)",
    nsfw="Whether it is NSFW",
    description="A short description",
    make_default="Use it when /imagine names no model",
    family="Model family (default: read from the file)",
    clip_skip="Default clip skip (anime SD 1.5 models usually want 2)",
    prediction="Prediction type (default: as the file says)",
    vae="A VAE .safetensors in the model folder to use instead of the model's own",
    profile="Sampling profile of a distilled checkpoint (default: read from the file)",
    variant="Which model of its architecture it is, e.g. FLUX.1 Kontext (whose file looks like dev); default: the file's",
)
@app_commands.choices(family=FAMILY_CHOICES, prediction=PREDICTION_CHOICES, profile=profile_choices("checkpoint"),
                      variant=VARIANT_CHOICES)  # fmt: skip
@app_commands.autocomplete(file=model_file_autocomplete)
async def model_add(
    interaction: discord.Interaction[Any],
    file: str,
    name: app_commands.Range[str, 1, 100] | None = None,
    nsfw: bool = False,
    description: str | None = None,
    make_default: bool = False,
    family: str | None = None,
    clip_skip: app_commands.Range[int, 1, 12] | None = None,
    prediction: str | None = None,
    vae: str | None = None,
    profile: str | None = None,
    variant: str | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    info = await inspect_new_file(interaction, "model", file)
    if info is None:
        return
    if info.architecture == "unknown":
        await send_private(interaction, f"I could not tell which architecture `{file}` is for, so I did not register it.")
        return
    if variant is not None and (why := variant_refusal(info.architecture, variant, file)) is not None:
        await send_private(interaction, why + " I did not register it.")
        return
    if vae and not await _vae_usable(interaction, vae):
        return
    try:
        extra = _model_options(family, clip_skip, prediction)
        if profile is not None:
            extra.update(profile_option()(profile, interaction))
        if variant is not None:
            extra["variant"] = variant
        entry = ModelEntry.from_file_info(
            info, name=name, nsfw=nsfw, description=description or "", vae=vae or "", **extra
        )
        added = await bot.registry.models.add(interaction.guild_id, entry, interaction.user.id)
        settings = await bot.registry.settings.get(interaction.guild_id)
        if make_default or not settings.default_model:
            await bot.registry.settings.update(interaction.guild_id, interaction.user.id, default_model=added.name)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    note = f"Registered **{added.name}**."
    if added.speed_profile:
        evidence = None if profile else evidence_for(info.path, info.metadata, None, "checkpoint", added.speed_profile)
        note += proposal(added.speed_profile, evidence, "/model edit")
    await send_private(interaction, note, embed=model_card(added, show_file=True))


async def _vae_usable(interaction: discord.Interaction[Any], vae: str) -> bool:
    """Read the VAE as the model is read (within this server's share, a real VAE) before any
    image depends on it: a wrong name would otherwise fail only at a member's first /imagine."""
    shown = embeds.truncate(vae, 200)
    info = await read_server_file(interaction, "model", vae, label="the VAE ")
    if info is None:
        return False
    if info.kind != "vae":
        await send_private(
            interaction,
            f"`{shown}` is {kind_description(info.kind)}, not a VAE, so I did not register the model. "
            "Pick a VAE `.safetensors` from the model folder, or leave `vae` out to use the model's own.",
        )
        return False
    return True


def _model_options(family: str | None, clip_skip: int | None, prediction: str | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if family is not None:
        changes["family"] = family
    if clip_skip is not None:
        changes["default_clip_skip"] = clip_skip
    if prediction is not None:
        changes["prediction_type"] = "" if prediction == "auto" else prediction
    return changes


def variant_defaults(entry: ModelEntry, variant: str) -> dict[str, Any]:
    """The new variant's steps and guidance where the entry still has the old one's (an
    admin's own defaults are kept): Kontext and dev share them, schnell does not."""
    spec = architectures.get(entry.architecture)
    if spec is None or (spec.guidance.kind == "cfg" and spec.dit is None):
        return {}  # SD keeps the entry's long-standing defaults (as ModelEntry.from_file_info)
    changes: dict[str, Any] = {}
    if entry.default_steps == spec.steps_for(entry.variant):
        changes["default_steps"] = spec.steps_for(variant)
    if entry.default_cfg == (spec.guidance_for(entry.variant).default or 1.0):
        changes["default_cfg"] = spec.guidance_for(variant).default or 1.0
    return changes


SAMPLER_CHOICES = [app_commands.Choice(name=s, value=s) for s in SAMPLERS]

#: ``/model edit``'s options: one line per field (option, registry field, type, description).
MODEL_EDIT_FIELDS: tuple[EditField, ...] = (
    EditField("new_name", "name", app_commands.Range[str, 1, 100], "Rename it"),
    EditField("size", "", str, "Default size, e.g. 832x1216", convert=size("default_width", "default_height")),
    EditField("steps", "default_steps", app_commands.Range[int, 1, MAX_STEPS], "Default denoising steps"),
    EditField("cfg", "default_cfg", app_commands.Range[float, 0.0, MAX_CFG], "Default CFG scale"),
    EditField("sampler", "default_sampler", str, "Default sampler", choices=SAMPLER_CHOICES),
    EditField("negative", "default_negative", app_commands.Range[str, 1, 4000], "Default negative prompt (`none` clears it)", convert=text_or_clear("default_negative")),
    EditField("description", "description", app_commands.Range[str, 1, 4000], "Description (`none` clears it)", convert=text_or_clear("description")),
    EditField("nsfw", "nsfw", bool, "Whether it is NSFW"),
    EditField("channels", "allowed_channel_ids", str, "Channels that may use it: type # to pick them, or `all`", convert=channel_set("allowed_channel_ids")),
    EditField("family", "family", str, "Model family (Pony, Illustrious, ...): LoRAs of other families get a warning", choices=FAMILY_CHOICES),
    EditField("clip_skip", "default_clip_skip", app_commands.Range[int, 1, 12], "Clip skip used when a request gives none"),
    EditField("profile", "speed_profile", str, "Sampling profile of a distilled checkpoint (`none` removes it)", choices=profile_choices("checkpoint"), convert=profile_option()),
    EditField("fast_with", "fast_with", app_commands.Range[str, 1, 100], "Speed LoRA (or faster model) the server's fast mode uses with it (`none` clears)", convert=text_or_clear("fast_with", None)),
    EditField("variant", "variant", str, "Which model of its architecture it is (FLUX.1 Kontext: an edit model)", choices=VARIANT_CHOICES),
    EditField("prediction", "prediction_type", str, "Prediction type; auto reads it from the file", choices=PREDICTION_CHOICES, convert=lambda v, _i: {"prediction_type": "" if v == "auto" else v}),
)


async def _apply_model_edit(interaction: discord.Interaction[Any], name: str, changes: dict[str, Any]) -> None:
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    if "variant" in changes:
        entry = await registry.models.get(interaction.guild_id, name)
        if entry is not None:
            why = variant_refusal(entry.architecture, changes["variant"], entry.name)
            if why is not None:
                await send_private(interaction, why + " Nothing was changed.")
                return
            changes = {**variant_defaults(entry, changes["variant"]), **changes}
    try:
        updated = await registry.models.update(interaction.guild_id, name, interaction.user.id, **changes)
        settings = await registry.settings.get(interaction.guild_id)
        if "name" in changes and settings.default_model and settings.default_model.lower() == name.lower():
            await registry.settings.update(interaction.guild_id, interaction.user.id, default_model=updated.name)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    await send_private(interaction, f"Updated **{updated.name}**.", embed=model_card(updated, show_file=True))


model_edit = build_edit_command(
    model,
    description="Change a model's defaults, name or channels (admin)",
    target_description="The model to change",
    target_autocomplete=any_model_autocomplete,
    fields=MODEL_EDIT_FIELDS,
    apply=_apply_model_edit,
)


@model.command(name="fast", description="Turn the server's fast mode on or off: each model with its fast_with (admin)")
@admin_only()
@app_commands.describe(enabled="On: every /imagine uses its model's fast_with unless a member asks for speed:normal")
async def model_fast(interaction: discord.Interaction[Any], enabled: bool) -> None:
    """/settings holds Discord's 25 options already, so the switch lives beside ``fast_with``."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    await registry.settings.update(interaction.guild_id, interaction.user.id, fast_mode=enabled)
    models = await registry.models.all(interaction.guild_id)
    lines = [f"**{m.name}** → `{m.fast_with}`" for m in models if m.fast_with]
    if not enabled:
        await send_private(interaction, "Fast mode is **off**: members get it with `/imagine speed:fast`.")
        return
    listed = "\n".join(lines) if lines else "No model has a fast setting yet: set one with `/model edit fast_with:`."
    await send_private(interaction, "Fast mode is **on** (a member opts out with `/imagine speed:normal`).\n" + listed)


@model.command(name="remove", description="Remove a model from this server (admin)")
@admin_only()
@app_commands.describe(name="The model to remove")
@app_commands.autocomplete(name=any_model_autocomplete)
async def model_remove(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    entry = await registry.models.get(interaction.guild_id, name)
    if entry is None:
        await send_private(interaction, f"No model named `{embeds.truncate(name, 100)}` here; see `/model list`.")
        return
    uses = await registry.saved_recipes.using(interaction.guild_id, model=entry)
    try:
        await registry.models.remove(interaction.guild_id, entry.name, interaction.user.id)
        settings = await registry.settings.get(interaction.guild_id)
        was_default = bool(settings.default_model) and settings.default_model.lower() == entry.name.lower()
        if was_default:
            await registry.settings.update(interaction.guild_id, interaction.user.id, default_model=None)
    except RegistryError as exc:
        await send_private(interaction, str(exc))
        return
    text = f"Removed **{entry.name}**. Images already posted keep their recipes."
    if was_default:
        text += " It was the default model: pick another with `/settings default_model`."
    await send_private(interaction, text + affected_recipes(uses))


async def _set_model_enabled(interaction: discord.Interaction[Any], name: str, enabled: bool) -> str:
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
    return (await registry.models.update(interaction.guild_id, name, interaction.user.id, enabled=enabled)).name


model_enable, model_disable = build_toggle_commands(
    model, noun="model", autocomplete=any_model_autocomplete, set_enabled=_set_model_enabled
)


class ModelsCog(FeatureCog, name="models"):
    feature_commands = (model,)
