"""``/model edit`` and ``/lora edit`` built from a table of fields, one line per field.

Several people add per-entry fields (a model's VAE, clip skip, prediction type, family...),
and an edit command written by hand needs three edits for each (an option in the signature,
its description, its line in the change map). Here a field is one :class:`EditField` in a
tuple, and :func:`build_edit_command` makes the slash command from the tuple: the options,
their descriptions, choices and autocomplete, the run-time admin check, and the callback
that turns the given options into one registry change, checked and audited as a whole.

discord.py reads a command's options from its callback's signature, so the callback gets a
signature made from the table (``inspect.Signature``, which ``inspect.signature`` honours);
option types are discord.py's own (``int``, ``bool``, ``app_commands.Range[...]``), so
Discord's client enforces ranges and types before the bot sees anything.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import discord
from discord import app_commands

from bot.ui import embeds
from bot.ui.common import admin_only, send_private

#: Turns one option's value into registry changes; raises FieldError with what to type instead.
Convert = Callable[[Any, discord.Interaction[Any]], Mapping[str, Any]]
#: Applies the changes to the entry named ``target`` and answers the admin.
Apply = Callable[[discord.Interaction[Any], str, dict[str, Any]], Awaitable[None]]
#: Written in a text option to clear the field.
CLEAR_WORDS = frozenset({"none", "clear", "-"})


class FieldError(ValueError):
    """An option's value the registry cannot take; the message says what to type instead."""


@dataclass(frozen=True)
class EditField:
    """One option of an edit command.

    ``attribute`` is the registry field it sets; ``convert`` replaces the plain
    "value -> {attribute: value}" for options that set several fields or need parsing.
    """

    option: str
    attribute: str
    annotation: Any
    description: str
    convert: Convert | None = None
    choices: Sequence[app_commands.Choice[Any]] | None = None
    autocomplete: Callable[..., Any] | None = None

    def changes(self, value: Any, interaction: discord.Interaction[Any]) -> Mapping[str, Any]:
        if self.convert is not None:
            return self.convert(value, interaction)
        return {self.attribute: value}


# --- converters shared by the tables ---------------------------------------------------------


def text_or_clear(attribute: str, empty: Any = "") -> Convert:
    """A text option where ``none`` empties the field."""

    def convert(value: str, _interaction: discord.Interaction[Any]) -> Mapping[str, Any]:
        return {attribute: empty if value.strip().lower() in CLEAR_WORDS else value}

    return convert


def comma_list(attribute: str) -> Convert:
    def convert(value: str, _interaction: discord.Interaction[Any]) -> Mapping[str, Any]:
        if value.strip().lower() in CLEAR_WORDS:
            return {attribute: ()}
        return {attribute: tuple(w.strip() for w in value.split(",") if w.strip())}

    return convert


_SIZE = re.compile(r"^\s*(\d{2,5})\s*[x×*]\s*(\d{2,5})\s*$", re.IGNORECASE)


def size(width: str, height: str) -> Convert:
    def convert(value: str, _interaction: discord.Interaction[Any]) -> Mapping[str, Any]:
        match = _SIZE.match(value)
        if not match:
            raise FieldError(f"Size `{embeds.truncate(value, 40)}` should look like `832x1216` (width x height).")
        return {width: int(match[1]), height: int(match[2])}

    return convert


_CHANNEL = re.compile(r"<#(\d{15,20})>|\b(\d{15,20})\b")


def channel_set(attribute: str) -> Convert:
    """``#art #studio`` (Discord turns a typed ``#`` into a mention) or ``all``."""

    def convert(value: str, interaction: discord.Interaction[Any]) -> Mapping[str, Any]:
        if value.strip().lower() in CLEAR_WORDS | {"all", "any", "every"}:
            return {attribute: frozenset()}
        ids = {int(a or b) for a, b in _CHANNEL.findall(value)}
        if not ids:
            raise FieldError("Name channels by typing `#` and picking them, or write `all` for every channel.")
        guild = interaction.guild
        unknown = [c for c in ids if guild is not None and guild.get_channel_or_thread(c) is None]
        if unknown:
            raise FieldError(f"{' '.join(f'<#{c}>' for c in unknown)} is not a channel of this server.")
        return {attribute: frozenset(ids)}

    return convert


# --- the builder -----------------------------------------------------------------------------


def build_edit_command(
    group: app_commands.Group,
    *,
    description: str,
    target_description: str,
    target_autocomplete: Callable[..., Any],
    fields: Sequence[EditField],
    apply: Apply,
) -> app_commands.Command[Any, ..., None]:
    """``/<group> edit name:<entry> <field options...>``, registered in ``group``."""
    by_option = {f.option: f for f in fields}
    if len(by_option) != len(fields) or "name" in by_option or len(fields) > 24:
        raise ValueError("edit fields need unique option names other than 'name', at most 24")

    async def edit(interaction: discord.Interaction[Any], **values: Any) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        target = values.pop("name")
        changes: dict[str, Any] = {}
        problems: list[str] = []
        for option, value in values.items():
            if value is None:
                continue
            try:
                changes.update(by_option[option].changes(value, interaction))
            except FieldError as exc:
                problems.append(str(exc))
        if problems:
            lines = ["**Nothing was changed. Fix these and try again:**"]
            lines += [f"{n}. {p}" for n, p in enumerate(problems, 1)]
            await send_private(interaction, "\n".join(lines))
            return
        if not changes:
            await send_private(interaction, "Nothing to change: give at least one option besides the name.")
            return
        await apply(interaction, target, changes)

    keyword = inspect.Parameter.KEYWORD_ONLY
    edit.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction),
            inspect.Parameter("name", keyword, annotation=str),
            *(inspect.Parameter(f.option, keyword, annotation=Optional[f.annotation], default=None) for f in fields),  # noqa: UP045 - a runtime object, not an annotation string
        ]
    )
    edit = app_commands.describe(name=target_description, **{f.option: f.description for f in fields})(edit)
    edit = app_commands.autocomplete(
        name=target_autocomplete, **{f.option: f.autocomplete for f in fields if f.autocomplete}
    )(edit)
    choices = {f.option: list(f.choices) for f in fields if f.choices}
    if choices:
        edit = app_commands.choices(**choices)(edit)
    edit = admin_only()(edit)
    return group.command(name="edit", description=description)(edit)


#: Sets an entry's ``enabled`` flag and returns its (new) name; raises RegistryError.
SetEnabled = Callable[[discord.Interaction[Any], str, bool], Awaitable[str]]


def build_toggle_commands(
    group: app_commands.Group,
    *,
    noun: str,
    autocomplete: Callable[..., Any],
    set_enabled: SetEnabled,
) -> tuple[app_commands.Command[Any, ..., None], app_commands.Command[Any, ..., None]]:
    """``/<group> enable name`` and ``/<group> disable name`` (admin) for an entry kind."""
    from bot.registry import RegistryError

    def make(enabled: bool) -> app_commands.Command[Any, ..., None]:
        async def toggle(interaction: discord.Interaction[Any], name: str) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                shown = await set_enabled(interaction, name, enabled)
            except RegistryError as exc:
                await send_private(interaction, str(exc))
                return
            state = (
                "enabled: members can use it again" if enabled
                else "disabled: members cannot use it until it is enabled"
            )
            await send_private(interaction, f"**{shown}** is {state}.")

        toggle = app_commands.describe(name=f"The {noun}")(toggle)
        toggle = app_commands.autocomplete(name=autocomplete)(toggle)
        toggle = admin_only()(toggle)
        description = (
            f"Let members use a disabled {noun} again (admin)" if enabled
            else f"Stop members using a {noun}, keeping everything about it (admin)"
        )
        return group.command(name="enable" if enabled else "disable", description=description)(toggle)

    return make(True), make(False)
