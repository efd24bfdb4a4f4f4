"""What Discord's client does before a slash command reaches the bot.

The client only offers commands a member may see, checks options against the registered
definition (names, required, choices, ranges, lengths) and sends typed values plus a
``resolved`` section for users, members, roles, channels and attachments. Tests that act as a
person go through the same checks, so they cannot send what no real client could.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox.discord_double.state import (
    ALL_PERMISSIONS,
    Channel,
    Member,
    Role,
    StoredAttachment,
    User,
)

SUBCOMMAND = 1
SUBCOMMAND_GROUP = 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11

CommandsByScope = Mapping[int | None, list[dict[str, Any]]]
Resolved = dict[str, dict[str, Any]]


def find_command(commands: CommandsByScope, name: str, channel: Channel, kind: int = 1) -> dict[str, Any]:
    """The command ``name`` of type ``kind`` (1 chat, 2 user, 3 message) as the channel sees
    it: guild commands first, then global ones."""
    scopes: list[int | None] = [] if channel.guild is None else [channel.guild.id]
    scopes.append(None)
    for scope in scopes:
        for command in commands.get(scope, []):
            if command["name"] == name and command.get("type", 1) == kind:
                if channel.is_dm and not allowed_in_dm(command):
                    raise PermissionError(f"/{name} is not available in direct messages")
                return command
    known = sorted({c["name"] for scope in scopes for c in commands.get(scope, [])})
    raise LookupError(
        f"/{name} is not registered where #{channel.name or 'DM'} can see it "
        f"(registered: {known}); did the bot sync its command tree?"
    )


def allowed_in_dm(command: dict[str, Any]) -> bool:
    contexts = command.get("contexts")
    if contexts is not None:
        return 1 in contexts
    return command.get("dm_permission", True) is not False


def check_can_use(command: dict[str, Any], user: User, channel: Channel, bypass: bool) -> None:
    """Members lacking ``default_member_permissions`` never see the command in their client."""
    required = command.get("default_member_permissions")
    if bypass or required is None or channel.guild is None:
        return
    member = channel.guild.member(user)
    bits = int(required)
    if member.permissions & bits != bits:
        raise PermissionError(
            f"{user.name} lacks permissions {bits:#x} that /{command['name']} requires by default; "
            "Discord hides the command from them (pass bypass_permissions=True to simulate an "
            "override in the server's integration settings)"
        )


def build_options(
    command: dict[str, Any],
    values: Mapping[str, Any],
    subcommand: str | None,
    resolved: Resolved,
    *,
    focused: str | None,
    store_attachment: Callable[[str, bytes], StoredAttachment],
) -> list[dict[str, Any]]:
    """``data.options`` for an interaction, wrapped in its subcommand (``"add"`` or ``"group add"``).

    With ``focused`` (autocomplete) the focused option is sent as the raw typed text and
    required options may be missing, as the user is still typing.
    """
    definitions = command.get("options") or []
    wrappers: list[tuple[int, str]] = []
    for part in subcommand.split() if subcommand else []:
        match = next(
            (o for o in definitions if o["name"] == part and o["type"] in (SUBCOMMAND, SUBCOMMAND_GROUP)),
            None,
        )
        if match is None:
            raise LookupError(f"/{command['name']} has no subcommand {part!r}")
        wrappers.append((match["type"], part))
        definitions = match.get("options") or []
    if any(o["type"] in (SUBCOMMAND, SUBCOMMAND_GROUP) for o in definitions):
        raise ValueError(f"/{command['name']} needs a subcommand: {[o['name'] for o in definitions]}")
    by_name = {o["name"]: o for o in definitions}
    unknown = set(values) - set(by_name)
    if unknown:
        raise LookupError(f"/{command['name']} has no options {sorted(unknown)} (it has {sorted(by_name)})")
    if focused is not None and focused not in values:
        raise ValueError(f"the focused option {focused!r} needs a (possibly empty) value in options")
    built: list[dict[str, Any]] = []
    for definition in definitions:
        name = definition["name"]
        if name not in values:
            if definition.get("required") and focused is None:
                raise ValueError(f"option {name!r} of /{command['name']} is required")
            continue
        if name == focused:
            built.append({"name": name, "type": definition["type"], "value": str(values[name]), "focused": True})
        else:
            value = option_value(definition, values[name], resolved, store_attachment)
            built.append({"name": name, "type": definition["type"], "value": value})
    for kind, part in reversed(wrappers):
        built = [{"name": part, "type": kind, "options": built}]
    return built


def option_value(
    definition: dict[str, Any],
    value: Any,
    resolved: Resolved,
    store_attachment: Callable[[str, bytes], StoredAttachment],
) -> Any:
    """One option's wire value, checked like the client checks it; entities go to ``resolved``."""
    kind = definition["type"]
    name = definition["name"]
    if kind == STRING:
        value = str(value)
        low, high = definition.get("min_length"), definition.get("max_length")
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            raise ValueError(f"option {name!r} must be {low}-{high} characters long")
    elif kind == INTEGER:
        value = int(value)
    elif kind == NUMBER:
        value = float(value)
    elif kind == BOOLEAN:
        value = bool(value)
    if kind in (INTEGER, NUMBER):
        low, high = definition.get("min_value"), definition.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"option {name!r} must be between {low} and {high}")
    choices = definition.get("choices")
    if choices and value not in [choice["value"] for choice in choices]:
        raise ValueError(f"option {name!r} only accepts {[c['value'] for c in choices]}")
    if kind in (USER, MENTIONABLE) and isinstance(value, User | Member):
        person = value.user if isinstance(value, Member) else value
        resolved.setdefault("users", {})[str(person.id)] = person.to_payload()
        if isinstance(value, Member):
            member = value.to_payload(with_permissions=True)
            member.pop("user")
            resolved.setdefault("members", {})[str(person.id)] = member
        return str(person.id)
    if kind in (ROLE, MENTIONABLE) and isinstance(value, Role):
        resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
        return str(value.id)
    if kind == CHANNEL and isinstance(value, Channel):
        resolved.setdefault("channels", {})[str(value.id)] = {
            "id": str(value.id), "name": value.name, "type": value.type, "permissions": str(ALL_PERMISSIONS),
        }
        return str(value.id)
    if kind == ATTACHMENT and isinstance(value, tuple) and len(value) == 2:
        filename, data = value
        attachment = store_attachment(str(filename), bytes(data))
        resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.to_payload()
        return str(attachment.id)
    if kind in (USER, CHANNEL, ROLE, MENTIONABLE, ATTACHMENT):
        raise TypeError(
            f"option {name!r} (type {kind}) needs a User/Member, Channel, Role or (filename, bytes), "
            f"not {type(value).__name__}"
        )
    return value
