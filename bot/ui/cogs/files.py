"""The engine's files as the add commands see them: what a server registered, what it may add.

Shared by ``/lora add``, ``/model add`` and ``/embedding add`` and their autocompletes.
"""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands

from bot.ui.common import is_admin, send_private
from bot.ui.embeds import truncate
from bot.ui.features import features_of
from engine.protocol import EngineError, FileInfo

Kind = Literal["lora", "model", "embedding"]


async def registered_files(interaction: discord.Interaction[Any], kind: Kind) -> set[str]:
    """Files of ``kind`` this server has registered already."""
    assert interaction.guild_id is not None
    registry = features_of(interaction).registry
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
        return await features_of(interaction).files_for(interaction.guild_id).inspect(kind, file)
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
        files = await features_of(interaction).files_for(interaction.guild_id).list(kind)
    except (EngineError, TimeoutError):
        return []
    taken = await registered_files(interaction, kind)
    needle = current.lower()
    # Paths over 100 characters cannot be a choice's value, so they are left out, not cut.
    paths = [f.path for f in files if f.path not in taken and needle in f.path.lower() and len(f.path) <= 100]
    return [app_commands.Choice(name=p, value=p) for p in paths[:25]]
