"""Checks and small helpers shared by the commands."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands

from bot.embeds import CONTENT_LIMIT, truncate
from engine.protocol import EngineError, FileInfo

if TYPE_CHECKING:
    from bot.app import AtelierBot

log = logging.getLogger(__name__)

ADMIN_PERMISSION = "manage_guild"


def bot_of(interaction: discord.Interaction[Any]) -> AtelierBot:
    return interaction.client  # type: ignore[return-value]


def is_admin(interaction: discord.Interaction[Any]) -> bool:
    """Manage Server, read from the permissions Discord resolved for this interaction.

    The command's default permission hides it from others, but server admins can override
    that in Integrations settings, so the bot checks again every time.
    """
    permissions = interaction.permissions
    if permissions.manage_guild or permissions.administrator:
        return True
    # The bot's owners (see bot.access) administer it in every server it serves.
    access = getattr(interaction.client, "access", None)
    return access is not None and access.is_owner(interaction.user.id)


def admin_only() -> Any:
    """Runtime admin check, raising MissingPermissions that the tree turns into a reply."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not is_admin(interaction):
            raise app_commands.MissingPermissions([ADMIN_PERMISSION])
        return True

    return app_commands.check(predicate)


def can_manage_messages(interaction: discord.Interaction[Any]) -> bool:
    permissions = interaction.permissions
    return bool(permissions.manage_messages or permissions.administrator)


def nsfw_channel(interaction: discord.Interaction[Any]) -> bool:
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def role_ids(interaction: discord.Interaction[Any]) -> frozenset[int]:
    user = interaction.user
    roles = getattr(user, "_roles", None)
    if roles is not None:
        return frozenset(int(r) for r in roles)
    return frozenset(r.id for r in getattr(user, "roles", ()))


async def send_private(interaction: discord.Interaction[Any], text: str | None = None, **kwargs: Any) -> None:
    """Answer privately whether or not the interaction was already acknowledged.

    A failed answer is logged, not raised: the caller has nothing better to tell the member.
    Text is cut to Discord's 2000 characters: refusals quote what the member typed, and a
    string option may be 6000 characters long.
    """
    if text:
        text = truncate(text, CONTENT_LIMIT)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text or None, ephemeral=True, **kwargs)  # type: ignore[arg-type]
        else:
            await interaction.response.send_message(text or None, ephemeral=True, **kwargs)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


Kind = Literal["lora", "model", "embedding"]


async def registered_files(interaction: discord.Interaction[Any], kind: Kind) -> set[str]:
    """Files of ``kind`` this server has registered already."""
    assert interaction.guild_id is not None
    registry = bot_of(interaction).registry
    if kind == "lora":
        return await registry.loras.files(interaction.guild_id)
    if kind == "embedding":
        return {e.file for e in await registry.embeddings.all(interaction.guild_id)}
    return {m.file for m in await registry.models.all(interaction.guild_id)}


#: How the add commands answer a file already registered.
_ALREADY = {"lora": "change it with `/lora edit`", "model": "see `/model info`", "embedding": "see `/embedding list`"}
#: The inspected kind each add command registers.
_WANTED = {"lora": "lora", "model": "checkpoint", "embedding": "embedding"}


async def read_server_file(
    interaction: discord.Interaction[Any], kind: Kind, file: str, *, label: str = ""
) -> FileInfo | None:
    """The engine's reading of ``file`` through this server's share; an error is answered
    privately ("I could not read {label}`file`: why") and gives None."""
    try:
        return await bot_of(interaction).files_for(interaction.guild_id).inspect(kind, file)
    except EngineError as exc:
        await send_private(interaction, f"I could not read {label}`{truncate(file, 200)}`: {exc.message}")
        return None


async def inspect_new_file(
    interaction: discord.Interaction[Any], kind: Kind, file: str
) -> FileInfo | None:
    """The first half of ``/lora add``, ``/model add`` and ``/embedding add``: the engine's
    reading of a file this server has not registered yet, of the kind the command registers,
    that the engine can run. Anything else is answered privately (with the command to use
    instead, or why the engine cannot run it) and gives None."""
    if file in await registered_files(interaction, kind):
        await send_private(interaction, f"`{truncate(file, 200)}` is registered here already; {_ALREADY[kind]}.")
        return None
    info = await read_server_file(interaction, kind, file)
    if info is None:
        return None
    if info.kind != _WANTED[kind]:
        from bot.registry.models import not_a_message

        wanted = {"lora": "a LoRA", "model": "a base model", "embedding": "a textual-inversion embedding"}[kind]
        await send_private(interaction, not_a_message(info, wanted, f"/{kind} add"))
        return None
    if info.cannot_run:
        # The engine's own verdict (engine.support): it names what the file is, what the
        # engine runs and what to do; the bot keeps no list of runnable architectures.
        await send_private(interaction, f"{info.cannot_run} I did not register it.")
        return None
    return info


async def unregistered_file_choices(
    interaction: discord.Interaction[Any], kind: Kind, current: str
) -> list[app_commands.Choice[str]]:
    """Files of ``kind`` within this server's share that it has not registered yet (``/… add``).

    Admins only: autocomplete runs before the command's admin check, and the engine's folders
    may be shared by several servers, so members would otherwise browse them.
    """
    if interaction.guild_id is None or not is_admin(interaction):
        return []
    try:
        # Autocomplete has 3 s in all; a busy or absent engine must not eat them.
        files = await bot_of(interaction).files_for(interaction.guild_id).list(kind)
    except (EngineError, TimeoutError):
        return []
    taken = await registered_files(interaction, kind)
    needle = current.lower()
    # Paths over 100 characters cannot be a choice's value, so they are left out, not cut.
    paths = [f.path for f in files if f.path not in taken and needle in f.path.lower() and len(f.path) <= 100]
    return [app_commands.Choice(name=p, value=p) for p in paths[:25]]


def to_choices(choices: Any) -> list[app_commands.Choice[str]]:
    """Registry choices -> Discord choices, never more than 25, labels ≤ 100, values ≤ 100."""
    out: list[app_commands.Choice[str]] = []
    for choice in list(choices)[:25]:
        out.append(app_commands.Choice(name=str(choice.name)[:100], value=str(choice.value)[:100]))
    return out


def affected_recipes(uses: Any, *, shown: int = 10) -> str:
    """The sentence naming saved recipes that used a removed model or LoRA (or nothing)."""
    uses = list(uses)
    if not uses:
        return ""
    listed = ", ".join(
        (f"the recipe book's **{truncate(u.name, 60)}**" if u.in_book else f"<@{u.user_id}>'s **{truncate(u.name, 60)}**")
        for u in uses[:shown]
    )
    more = f" and {len(uses) - shown} more" if len(uses) > shown else ""
    return (
        f"\n{len(uses)} saved recipe(s) used it and will be refused until it is registered again "
        f"under the same name: {listed}{more}."
    )
