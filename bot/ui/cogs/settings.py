"""``/settings`` (admin): show or change this server's rules.

With no options it shows the current values; every given option is applied in one change,
checked together by the registry (e.g. a minimum above the maximum is refused as a whole).
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.registry import ImageCheck, NsfwPolicy, RegistryError, ServerSettings
from bot.registry.checks import HARD_MAX_LORAS, MAX_CFG, MAX_SIDE, MAX_STEPS, MIN_SIDE
from bot.ui import embeds
from bot.ui.cogs.cog import FeatureCog
from bot.ui.cogs.edit_fields import CLEAR_WORDS
from bot.ui.cogs.model import model_name_autocomplete
from bot.ui.common import admin_only
from bot.ui.features import features_of

# The option ranges Discord's client enforces are the engine's own limits (engine.validation
# RecipeLimits, through bot.registry.checks): an admin can never allow what the engine refuses.
# discord.py reads these annotations when the module is imported, so they are module names.
MaxLoras = app_commands.Range[int, 1, HARD_MAX_LORAS]
Steps = app_commands.Range[int, 1, MAX_STEPS]
Cfg = app_commands.Range[float, 0.0, MAX_CFG]
Side = app_commands.Range[int, MIN_SIDE, MAX_SIDE]
RoleCap = app_commands.Range[int, 0, HARD_MAX_LORAS]

POLICY_CHOICES = [
    app_commands.Choice(name="only in age-restricted channels", value=NsfwPolicy.NSFW_CHANNELS.value),
    app_commands.Choice(name="never", value=NsfwPolicy.NEVER.value),
    app_commands.Choice(name="anywhere", value=NsfwPolicy.ANYWHERE.value),
]
IMAGE_CHECK_CHOICES = [
    app_commands.Choice(name="withhold flagged images (outside NSFW channels)", value=ImageCheck.WITHHOLD.value),
    app_commands.Choice(name="post flagged images behind a spoiler", value=ImageCheck.SPOILER.value),
    app_commands.Choice(name="off: post every image as it is", value=ImageCheck.OFF.value),
]


def settings_embed(settings: ServerSettings, *, classifier: str | None = None) -> discord.Embed:
    embed = discord.Embed(title="Server settings", colour=embeds.ACCENT)
    rows = [
        ("LoRAs per image", str(settings.max_loras)),
        ("Weight range", f"{settings.weight_min:g} to {settings.weight_max:g}"),
        ("Steps", f"{settings.steps_min} to {settings.steps_max}"),
        ("CFG", f"{settings.cfg_min:g} to {settings.cfg_max:g}"),
        ("Size per side", f"{settings.size_min} to {settings.size_max} px"),
        ("Images per request", str(settings.max_count)),
        ("Prompt limit", f"{settings.prompt_limit} characters"),
        ("Queue limit per member", str(settings.queue_limit_per_user)),
        ("Worked on at once per member", str(settings.active_jobs_per_user)),
        ("Queue limit for the server", str(settings.server_queue_limit)),
        ("Add missing trigger words", "yes" if settings.auto_trigger_words else "no, report them"),
        ("NSFW", settings.nsfw_policy.value),
        ("Default model", settings.default_model or "none"),
        (
            "Image check",
            f"{settings.image_check} ({classifier})" if classifier else
            f"{settings.image_check} (no classifier installed: images are posted unchecked)",
        ),
    ]
    for name, value in rows:
        embed.add_field(name=name, value=value, inline=True)
    if settings.priority_roles:
        embed.add_field(
            name="Priority roles (twice the share of turns)",
            value=", ".join(f"<@&{role}>" for role in settings.priority_roles),
            inline=False,
        )
    if settings.fetch_roles:
        embed.add_field(
            name="May fetch from Civitai in /imagine",
            value=" ".join(f"<@&{role}>" for role in settings.fetch_roles),
            inline=False,
        )
    if settings.role_max_loras:
        embed.add_field(
            name="Role stack caps",
            value="\n".join(f"<@&{role}>: {cap}" for role, cap in settings.role_max_loras.items()),
            inline=False,
        )
    embed.add_field(
        name=f"Blocked in prompts ({len(settings.blocked_words)})",
        value=embeds.truncate(", ".join(f"`{w}`" for w in settings.blocked_words), 1000) or "nothing",
        inline=False,
    )
    return embeds.fit_embed(embed)


@app_commands.command(name="settings", description="Show or change this server's Atelier settings (admin)")
@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
@admin_only()
@app_commands.describe(
    max_loras="Most LoRAs in one image",
    weight_min="Lowest LoRA weight allowed (negative allows slider LoRAs in reverse)",
    weight_max="Highest LoRA weight allowed",
    steps_min="Fewest denoising steps",
    steps_max="Most denoising steps",
    cfg_min="Lowest CFG scale",
    cfg_max="Highest CFG scale",
    size_min="Smallest image side in pixels (a multiple of 8)",
    size_max="Largest image side in pixels (a multiple of 8)",
    max_count="Most images per request",
    prompt_limit="Longest prompt, in characters",
    queue_limit="Jobs one member may have waiting at once",
    active_limit="Jobs of one member the GPU works on at once while others wait",
    server_queue_limit="Jobs this whole server may have waiting at once",
    priority_role="A role whose members get twice the share of turns (with priority)",
    priority="Give priority_role priority (true) or take it away (false)",
    auto_trigger_words="Add a LoRA's missing trigger words to the prompt (or only report them)",
    nsfw_policy="Where NSFW models and LoRAs may be used",
    default_model="Model used when /imagine names none",
    role="Give this role a different LoRA cap (with role_max_loras)",
    role_max_loras="LoRA cap for the role (0 removes the override)",
    image_check="What happens to an image the classifier flags outside age-restricted channels",
    blocklist="Comma-separated words or phrases refused in prompts (`word*` matches endings; `none` clears)",
    fetch_role="A role whose members may have a LoRA fetched from Civitai by its AIR in /imagine",
    fetch_on_demand="With fetch_role: allow (true) or stop (false) it; alone, false stops every role",
)
@app_commands.choices(nsfw_policy=POLICY_CHOICES, image_check=IMAGE_CHECK_CHOICES)
@app_commands.autocomplete(default_model=model_name_autocomplete)
async def settings(
    interaction: discord.Interaction[Any],
    max_loras: MaxLoras | None = None,
    weight_min: app_commands.Range[float, -10.0, 10.0] | None = None,
    weight_max: app_commands.Range[float, -10.0, 10.0] | None = None,
    steps_min: Steps | None = None,
    steps_max: Steps | None = None,
    cfg_min: Cfg | None = None,
    cfg_max: Cfg | None = None,
    size_min: Side | None = None,
    size_max: Side | None = None,
    max_count: app_commands.Range[int, 1, 4] | None = None,
    prompt_limit: app_commands.Range[int, 1, 6000] | None = None,
    queue_limit: app_commands.Range[int, 1, 100] | None = None,
    active_limit: app_commands.Range[int, 1, 16] | None = None,
    server_queue_limit: app_commands.Range[int, 1, 5000] | None = None,
    priority_role: discord.Role | None = None,
    priority: bool | None = None,
    auto_trigger_words: bool | None = None,
    nsfw_policy: str | None = None,
    default_model: str | None = None,
    role: discord.Role | None = None,
    role_max_loras: RoleCap | None = None,
    image_check: str | None = None,
    blocklist: app_commands.Range[str, 1, 4000] | None = None,
    fetch_role: discord.Role | None = None,
    fetch_on_demand: bool | None = None,
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.guild_id is not None
    bot = features_of(interaction)
    registry = bot.registry
    classifier = bot.safety.classifier.name if bot.safety.classifier else None
    current = await registry.settings.get(interaction.guild_id)
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("max_loras", max_loras),
            ("weight_min", weight_min),
            ("weight_max", weight_max),
            ("steps_min", steps_min),
            ("steps_max", steps_max),
            ("cfg_min", cfg_min),
            ("cfg_max", cfg_max),
            ("size_min", size_min),
            ("size_max", size_max),
            ("max_count", max_count),
            ("prompt_limit", prompt_limit),
            ("queue_limit_per_user", queue_limit),
            ("active_jobs_per_user", active_limit),
            ("server_queue_limit", server_queue_limit),
            ("auto_trigger_words", auto_trigger_words),
            ("nsfw_policy", NsfwPolicy(nsfw_policy) if nsfw_policy else None),
            ("default_model", default_model),
            ("image_check", image_check),
            ("blocked_words", _blocklist(blocklist)),
        )
        if value is not None
    }
    if (role is None) != (role_max_loras is None):
        await interaction.followup.send("Give both `role` and `role_max_loras` to set a role's cap.", ephemeral=True)
        return
    if role is not None and role_max_loras is not None:
        caps = dict(current.role_max_loras)
        if role_max_loras == 0:
            caps.pop(role.id, None)
        else:
            caps[role.id] = role_max_loras
        changes["role_max_loras"] = caps
    if (priority_role is None) != (priority is None):
        await interaction.followup.send("Give both `priority_role` and `priority` to change a role's priority.", ephemeral=True)
        return
    if priority_role is not None and priority is not None:
        roles = set(current.priority_roles)
        if priority:
            roles.add(priority_role.id)
        else:
            roles.discard(priority_role.id)
        changes["priority_roles"] = tuple(sorted(roles))
    if fetch_role is not None or fetch_on_demand is not None:
        roles = _fetch_roles(current.fetch_roles, fetch_role, fetch_on_demand)
        if roles is None:
            await interaction.followup.send(
                "Give `fetch_role` with `fetch_on_demand:true` to let that role fetch, or `fetch_on_demand:false` "
                "(with or without a role) to stop.", ephemeral=True,
            )  # fmt: skip
            return
        changes["fetch_roles"] = roles
    if default_model is not None and await registry.models.get(interaction.guild_id, default_model) is None:
        await interaction.followup.send(f"There is no model named `{default_model}`; see `/model list`.", ephemeral=True)
        return
    if not changes:
        await interaction.followup.send(embed=settings_embed(current, classifier=classifier), ephemeral=True)
        return
    try:
        updated = await registry.settings.update(interaction.guild_id, interaction.user.id, **changes)
    except RegistryError as exc:
        await interaction.followup.send(str(exc), ephemeral=True)
        return
    await interaction.followup.send(
        "Settings saved.", embed=settings_embed(updated, classifier=classifier), ephemeral=True
    )


def _fetch_roles(current: tuple[int, ...], role: discord.Role | None, allow: bool | None) -> tuple[int, ...] | None:
    """The roles that may fetch on demand after this change; None when the options do not say."""
    if role is None:
        return () if allow is False else None
    if allow is False:
        return tuple(r for r in current if r != role.id)
    return tuple(dict.fromkeys((*current, role.id)))


def _blocklist(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.strip().lower() in CLEAR_WORDS:
        return ()
    return tuple(term for term in (t.strip() for t in text.split(",")) if term)


class SettingsCog(FeatureCog, name="settings"):
    feature_commands = (settings,)
