"""Embeds and message text, built so that Discord's limits can never be exceeded.

discord.py does not check embed sizes; Discord answers an oversize embed with a 400 and the
user sees nothing. Every builder here truncates each part to its own limit and then trims
the whole embed to the 6000-character total, so a 10,000-character description or a
100-LoRA stack degrades into an ellipsis instead of an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import discord

from bot.pictures import edits
from engine import profiles
from engine.protocol import Recipe

TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_COUNT_LIMIT = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
AUTHOR_LIMIT = 256
EMBED_TOTAL_LIMIT = 6000
CONTENT_LIMIT = 2000
ELLIPSIS = "…"

ACCENT = discord.Colour(0x7C5CFF)


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut so nobody mistakes it for the whole."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS


def embed_length(embed: discord.Embed) -> int:
    """The character count Discord compares with 6000 (title, description, fields, footer, author)."""
    return len(embed)


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Enforce every per-part limit, then trim the total to 6000 characters.

    Trimming order: description first (usually the longest, least structured part), then
    fields from the last one up. The title and footer are kept.
    """
    if embed.title:
        embed.title = truncate(embed.title, TITLE_LIMIT)
    if embed.description:
        embed.description = truncate(embed.description, DESCRIPTION_LIMIT)
    if embed.footer.text:
        embed.set_footer(text=truncate(embed.footer.text, FOOTER_LIMIT), icon_url=embed.footer.icon_url)
    if embed.author.name:
        embed.set_author(name=truncate(embed.author.name, AUTHOR_LIMIT), url=embed.author.url)
    fields = embed.fields[:FIELD_COUNT_LIMIT]
    embed.clear_fields()
    for f in fields:
        embed.add_field(
            name=truncate(f.name or "\u200b", FIELD_NAME_LIMIT),
            value=truncate(f.value or "\u200b", FIELD_VALUE_LIMIT),
            inline=bool(f.inline),
        )
    excess = len(embed) - EMBED_TOTAL_LIMIT
    if excess > 0 and embed.description:
        keep = max(1, len(embed.description) - excess)
        embed.description = truncate(embed.description, keep)
        excess = len(embed) - EMBED_TOTAL_LIMIT
    while excess > 0 and embed.fields:
        last = embed.fields[-1]
        value = last.value or ""
        shrink_to = len(value) - excess
        embed.remove_field(len(embed.fields) - 1)
        if shrink_to >= 16:
            embed.add_field(name=last.name, value=truncate(value, shrink_to), inline=bool(last.inline))
        excess = len(embed) - EMBED_TOTAL_LIMIT
    return embed


def format_weight(weight: float) -> str:
    """Weights shown the way users type them: ``0.7``, ``1``, ``-0.5``."""
    return f"{weight:g}"


def recipe_embed(
    recipe: Recipe,
    *,
    requester: str | None = None,
    seconds: float | None = None,
    notes: Sequence[str] = (),
    parent: tuple[str, str] | None = None,
    reference: str | None = None,
) -> discord.Embed:
    """The embed under every generated image: the full recipe, readable at a glance.

    ``parent`` is (label, message link) of the image it was rerolled or remixed from, shown
    as the embed's author line, which Discord makes a link. ``reference`` (a short job id)
    goes in the footer: support can find the job with it, and the bot recognises its own
    post after a restart.
    """
    embed = discord.Embed(title=truncate(recipe.prompt or "(empty prompt)", TITLE_LIMIT), colour=ACCENT)
    if parent is not None:
        embed.set_author(name=truncate(parent[0], AUTHOR_LIMIT), url=parent[1])
    if recipe.negative_prompt:
        embed.description = "**Negative:** " + recipe.negative_prompt
    embed.add_field(name="Model", value=recipe.model_name or recipe.model, inline=True)
    embed.add_field(name="Seed", value=str(recipe.seed), inline=True)
    embed.add_field(name="Size", value=f"{recipe.width}×{recipe.height}", inline=True)
    embed.add_field(name="Sampler", value=recipe.sampler, inline=True)
    embed.add_field(name="Steps", value=str(recipe.steps), inline=True)
    embed.add_field(name="CFG", value=format_weight(recipe.cfg_scale), inline=True)
    if recipe.clip_skip > 1:
        embed.add_field(name="Clip skip", value=str(recipe.clip_skip), inline=True)
    if getattr(recipe, "shift", None) is not None:
        embed.add_field(name="Shift", value=format_weight(recipe.shift), inline=True)
    if recipe.loras:
        lines = [f"`{lora.display_name}` × {format_weight(lora.weight)}" for lora in recipe.loras]
        embed.add_field(name=f"LoRAs ({len(recipe.loras)})", value="\n".join(lines), inline=False)
    if edits(recipe):
        embed.add_field(name="Edit of", value=truncate(recipe.init_image_source or "an input picture", 300), inline=False)
    if notes:
        embed.add_field(name="Notes", value="\n".join(f"• {n}" for n in notes), inline=False)
    footer = []
    if requester:
        footer.append(f"by {requester}")
    if recipe.count > 1:
        footer.append(f"{recipe.count} images, seeds {recipe.seed}–{recipe.seed + recipe.count - 1}")
    if seconds is not None:
        footer.append(f"{seconds:.1f} s")
    if reference:
        footer.append(f"job {reference}")
    if footer:
        embed.set_footer(text=" · ".join(footer))
    return fit_embed(embed)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def lora_card(lora: Any, *, bookmarked: bool | None = None, show_file: bool = False) -> discord.Embed:
    """A LoRA's card for ``/lora info`` and ``/lora add``; accepts the registry's record.

    The file's path on the operator's disk is shown to admins only (``show_file``);
    everyone sees its hash, which is what Civitai and A1111 name it by.
    """
    name = _get(lora, "name", "?")
    embed = discord.Embed(title=truncate(f"LoRA · {name}", TITLE_LIMIT), colour=ACCENT)
    description = _get(lora, "description") or ""
    if description:
        embed.description = description
    embed.add_field(name="Architecture", value=str(_get(lora, "architecture", "unknown")), inline=True)
    family = _get(lora, "family", "unknown") or "unknown"
    if family != "unknown":
        from engine.families import family_label

        embed.add_field(name="Family", value=family_label(str(family)), inline=True)
    lora_format = _get(lora, "lora_format", None)
    if lora_format:
        rank = _get(lora, "rank", None)
        embed.add_field(
            name="Format", value=str(lora_format) + (f" · rank {rank}" if rank else ""), inline=True
        )
    embed.add_field(name="Category", value=str(_get(lora, "category", "other")), inline=True)
    speed_profile = _get(lora, "speed_profile", None)
    if speed_profile:
        embed.add_field(name="Sampling profile", value=profiles.describe(str(speed_profile)), inline=False)
    default_weight = _get(lora, "default_weight", 1.0)
    embed.add_field(name="Default weight", value=format_weight(float(default_weight)), inline=True)
    low, high = _get(lora, "recommended_min", None), _get(lora, "recommended_max", None)
    if low is not None and high is not None:
        embed.add_field(
            name="Recommended range", value=f"{format_weight(low)} – {format_weight(high)}", inline=True
        )
    uses = _get(lora, "uses", None)
    if uses is None:
        uses = _get(lora, "use_count", 0)
    embed.add_field(name="Uses", value=str(uses), inline=True)
    enabled = _get(lora, "enabled", True)
    embed.add_field(name="Status", value="enabled" if enabled else "disabled", inline=True)
    if _get(lora, "nsfw", False):
        embed.add_field(name="NSFW", value="yes", inline=True)
    triggers = list(_get(lora, "trigger_words", ()) or ())
    embed.add_field(
        name="Trigger words", value=", ".join(f"`{t}`" for t in triggers) if triggers else "none", inline=False
    )
    file = _get(lora, "file", None)
    hashes = [f"`{file}`"] if file and show_file else []
    autov2 = _get(lora, "autov2", None)
    if autov2:
        hashes.append(f"AutoV2 `{autov2}`")
    if hashes:
        embed.add_field(name="File", value="\n".join(hashes), inline=False)
    source = _get(lora, "source", None)
    if source:
        embed.add_field(name="Source", value=str(source), inline=False)
    preview = _get(lora, "preview_url", None)
    if isinstance(preview, str) and preview.startswith(("http://", "https://", "attachment://")):
        embed.set_thumbnail(url=preview)
    if bookmarked:
        embed.set_footer(text="★ bookmarked")
    return fit_embed(embed)


def problems_message(problems: Iterable[Any], notes: Iterable[str] = ()) -> str:
    """All validation problems in one message, each with its fix and "did you mean" names.

    Accepts the validator's problem records (``message``, ``fix``, ``suggestions``) or plain
    strings, and always fits in one 2000-character message.
    """
    lines = ["**This request can't run yet. Fix these and send it again:**"]
    for number, problem in enumerate(problems, 1):
        if isinstance(problem, str):
            lines.append(f"{number}. {problem}")
            continue
        message = _get(problem, "message", str(problem))
        line = f"{number}. {message}"
        fix = _get(problem, "fix", None)
        if fix:
            line += f"\n   ↳ {fix}"
        suggestions = list(_get(problem, "suggestions", ()) or ())
        if suggestions:
            line += "\n   ↳ did you mean " + ", ".join(f"`{s}`" for s in suggestions) + "?"
        lines.append(line)
    notes = list(notes)
    if notes:
        lines.append("\n" + "\n".join(f"note: {n}" for n in notes))
    return truncate("\n".join(lines), CONTENT_LIMIT)


def list_embed(title: str, lines: Sequence[str], *, empty: str = "Nothing here yet.") -> discord.Embed:
    """A simple list (search results, bookmarks, models), cut to fit."""
    embed = discord.Embed(title=truncate(title, TITLE_LIMIT), colour=ACCENT)
    embed.description = "\n".join(lines) if lines else empty
    return fit_embed(embed)


def recipe_card(
    recipe: Recipe,
    *,
    title: str,
    author_id: int | None,
    shared_by: int | None,
    code: str,
    lora_links: dict[str, str] | None = None,
    missing: Sequence[str] = (),
    notes: Sequence[str] = (),
    source_url: str | None = None,
    image_url: str | None = None,
) -> discord.Embed:
    """A recipe shared in a channel (or shown privately): everything to make it again.

    LoRAs link to their registry source (Civitai page, URL) where one is known; ``missing``
    lists what this server no longer has, with what to use instead.
    """
    embed = discord.Embed(title=truncate(title, TITLE_LIMIT), colour=ACCENT, url=source_url)
    credit = []
    if author_id:
        credit.append(f"Recipe by <@{author_id}>")
    if shared_by and shared_by != author_id:
        credit.append(f"shared by <@{shared_by}>")
    lines = [" · ".join(credit)] if credit else []
    lines.append(f"**Prompt:** {recipe.prompt or '(empty)'}")
    if recipe.negative_prompt:
        lines.append(f"**Negative:** {recipe.negative_prompt}")
    embed.description = "\n".join(lines)
    embed.add_field(name="Model", value=recipe.model_label or "(server default)", inline=True)
    settings = f"{recipe.sampler} · {recipe.steps} steps · CFG {format_weight(recipe.cfg_scale)} · {recipe.width}×{recipe.height} · seed {recipe.seed}"
    if recipe.clip_skip > 1:
        settings += f" · clip skip {recipe.clip_skip}"
    if getattr(recipe, "shift", None) is not None:
        settings += f" · shift {format_weight(recipe.shift)}"
    embed.add_field(name="Settings", value=settings, inline=False)
    if recipe.loras:
        links = lora_links or {}
        rows = []
        for lora in recipe.loras:
            name = lora.display_name
            shown = f"[{name}]({links[name]})" if name in links else f"`{name}`"
            rows.append(f"{shown} × {format_weight(lora.weight)}")
        embed.add_field(name=f"LoRAs ({len(recipe.loras)})", value="\n".join(rows), inline=False)
    if edits(recipe):
        embed.add_field(name="Edit of", value=truncate(recipe.init_image_source or "an input picture", 300), inline=False)
    if missing:
        embed.add_field(name="⚠️ Not available here", value="\n".join(f"• {m}" for m in missing), inline=False)
    if notes:
        embed.add_field(name="Notes", value="\n".join(f"• {n}" for n in notes), inline=False)
    if len(code) <= FIELD_VALUE_LIMIT - 30:
        embed.add_field(name="Make it yourself", value=f"`/imagine recipe:{code}`", inline=False)
    else:
        embed.add_field(name="Make it yourself", value="Press **Use this recipe**, or **Remix** to change it first.", inline=False)
    if image_url:
        embed.set_thumbnail(url=image_url)
    return fit_embed(embed)
