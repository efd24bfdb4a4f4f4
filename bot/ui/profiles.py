"""Sampling profiles in the admin commands: the choices, the option converter, the card line
and the sentence ``/lora add`` and ``/model add`` answer with when they propose one.

A profile is proposed the way trigger words are (see :mod:`bot.ui.cogs.lora`): read from
the file at registration, set on the entry at once, shown to the admin with where it was
read from, and changed or removed with ``/lora edit profile:`` / ``/model edit profile:``.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.ui.cogs.edit_fields import CLEAR_WORDS, Convert
from engine import profiles
from engine.profiles import describe

#: The option value that removes a profile.
NONE = "none"


def profile_choices(kind: str) -> list[app_commands.Choice[str]]:
    """The shipped profiles a ``kind`` ("lora" or "checkpoint") may take, plus "none" (at most
    25): LoRAs take speed-LoRA profiles, models any (a Lightning merge runs as Lightning)."""
    found = [app_commands.Choice(name=p.label[:100], value=p.id) for p in profiles.profiles().values()
             if kind != "lora" or p.kind == "lora"]  # fmt: skip
    return [*found[:24], app_commands.Choice(name="none (no profile)", value=NONE)]


def profile_option(attribute: str = "speed_profile") -> Convert:
    def convert(value: str, _interaction: discord.Interaction[Any]) -> dict[str, Any]:
        return {attribute: None if value.strip().lower() in CLEAR_WORDS else value}

    return convert


def proposal(profile_id: str | None, evidence: str | None, command: str) -> str:
    """The sentence telling the admin which profile was set and how to change it."""
    profile = profiles.get(profile_id)
    if profile is None:
        return ""
    where = f" (read from its {evidence})" if evidence else ""
    return (f" Sampling profile **{profile.label}**{where}: {profile.summary()}, used whenever it runs; "
            f"keep it, or change it with `{command} profile:` (`none` removes it).")  # fmt: skip


def evidence_for(file: str, metadata: Any, base_model: str | None, kind: str, profile_id: str | None) -> str | None:
    """Where the proposed profile was read from, if it is the one detection gives."""
    found = profiles.detect(file, metadata if isinstance(metadata, dict) else None, base_model, kind=kind)
    return found.evidence if found is not None and found.profile.id == profile_id else None


__all__ = ["NONE", "describe", "evidence_for", "profile_choices", "profile_option", "proposal"]
