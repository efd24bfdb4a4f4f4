"""What the Discord double remembers: users, guilds, channels, roles, messages, interactions.

Every object renders itself as the JSON Discord would send (``to_payload``), so the bot under
test parses exactly what it would parse in production.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
ALL_PERMISSIONS = (1 << 53) - 1
ADMINISTRATOR = 0x8
MANAGE_GUILD = 0x20
ADD_REACTIONS = 0x40
VIEW_CHANNEL = 0x400
SEND_MESSAGES = 0x800
MANAGE_MESSAGES = 0x2000
EMBED_LINKS = 0x4000
ATTACH_FILES = 0x8000
READ_MESSAGE_HISTORY = 0x10000
USE_EXTERNAL_EMOJIS = 0x40000
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
# What @everyone may do on a new server (the parts a bot's users need).
DEFAULT_EVERYONE_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS
)
# What the bot's own role gets when it joins: the defaults plus deleting others' messages.
BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | MANAGE_MESSAGES
EPHEMERAL = 1 << 6
LOADING = 1 << 7

_increment = itertools.count(1)


def snowflake() -> int:
    """A fresh id shaped like Discord's: creation time in the high bits, so created_at is right."""
    now_ms = int(time.time() * 1000)
    return ((now_ms - DISCORD_EPOCH_MS) << 22) | (next(_increment) & 0x3FFFFF)


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat()


@dataclass(eq=False)
class User:
    """A Discord account: a person the tests act as, or the bot itself."""

    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": None if self.bot else self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass(eq=False)
class Member:
    """A user inside one guild; permissions come from @everyone plus the member's roles."""

    user: User
    guild: Guild
    roles: list[Role] = field(default_factory=list)
    joined_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def permissions(self) -> int:
        if self.user.id == self.guild.owner_id:
            return ALL_PERMISSIONS
        value = self.guild.everyone.permissions
        for role in self.roles:
            value |= role.permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def to_payload(self, *, with_permissions: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "user": self.user.to_payload(),
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": [str(role.id) for role in self.roles],
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_permissions:
            payload["permissions"] = str(self.permissions)
        return payload


@dataclass(eq=False)
class Channel:
    """A guild text channel (type 0) or a direct-message channel (type 1, guild None)."""

    id: int
    name: str
    guild: Guild | None
    type: int = 0
    nsfw: bool = False
    position: int = 0
    recipients: list[User] = field(default_factory=list)

    @property
    def is_dm(self) -> bool:
        return self.guild is None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def to_payload(self) -> dict[str, Any]:
        if self.guild is None:
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user.to_payload() for user in self.recipients],
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild.id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": None,
            "parent_id": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    everyone: Role
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    attachment_size_limit: int | None = None
    #: Where Discord posts join messages (and bots greet a server); set_system_channel().
    system_channel_id: int | None = None

    def member(self, user: User) -> Member:
        try:
            return self.members[user.id]
        except KeyError:
            raise LookupError(
                f"{user.name} is not a member of {self.name}: add them with double.add_member()"
            ) from None

    @property
    def owner(self) -> Member:
        return self.members[self.owner_id]

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_payload() for role in [self.everyone, *self.roles]],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": str(self.system_channel_id) if self.system_channel_id else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": iso(datetime.datetime.now(datetime.UTC)),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [member.to_payload() for member in self.members.values()],
            "channels": [channel.to_payload() for channel in self.channels],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(eq=False)
class StoredAttachment:
    """An uploaded file, kept byte for byte and served back from the double's CDN path."""

    id: int
    filename: str
    data: bytes
    content_type: str
    description: str | None = None
    url: str = ""
    #: Where Discord's media proxy serves a preview of it (a WebP without PNG text chunks).
    proxy_url: str = ""

    @property
    def size(self) -> int:
        return len(self.data)

    def image_size(self) -> tuple[int, int] | None:
        """Width and height read from a PNG header (Discord reports them for images)."""
        if self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            width, height = struct.unpack(">II", self.data[16:24])
            return width, height
        return None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url or self.url,
            "content_type": self.content_type,
        }
        if self.description:
            payload["description"] = self.description
        dimensions = self.image_size()
        if dimensions:
            payload["width"], payload["height"] = dimensions
        return payload


@dataclass(frozen=True)
class Button:
    """A button flattened out of a message's action rows, for easy assertions."""

    custom_id: str | None
    label: str | None
    style: int
    url: str | None = None
    disabled: bool = False


@dataclass(eq=False)
class StoredMessage:
    """A message as the channel shows it; ``deleted`` keeps it visible to assertions."""

    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    created_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    edited_at: datetime.datetime | None = None
    deleted: bool = False
    application_id: int | None = None
    interaction: InteractionHandle | None = None
    edits: int = 0

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred "thinking…" response not filled in yet."""
        return bool(self.flags & LOADING)

    @property
    def buttons(self) -> list[Button]:
        found: list[Button] = []

        def walk(components: list[dict[str, Any]]) -> None:
            for component in components:
                if component.get("type") == 2:
                    found.append(Button(
                        custom_id=component.get("custom_id"),
                        label=component.get("label"),
                        style=int(component.get("style", 1)),
                        url=component.get("url"),
                        disabled=bool(component.get("disabled", False)),
                    ))
                for key in ("components", "accessory"):
                    nested = component.get(key)
                    if isinstance(nested, dict):
                        walk([nested])
                    elif isinstance(nested, list):
                        walk(nested)

        walk(self.components)
        return found

    def find_component(self, custom_id: str) -> dict[str, Any] | None:
        def walk(components: list[dict[str, Any]]) -> dict[str, Any] | None:
            for component in components:
                if component.get("custom_id") == custom_id:
                    return component
                for key in ("components", "accessory"):
                    nested = component.get(key)
                    children = [nested] if isinstance(nested, dict) else nested or []
                    hit = walk(children)
                    if hit is not None:
                        return hit
            return None

        return walk(self.components)

    def attachment(self, filename: str) -> StoredAttachment:
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        names = ", ".join(a.filename for a in self.attachments) or "none"
        raise LookupError(f"message {self.id} has no attachment {filename!r} (it has: {names})")

    def to_text(self) -> str:
        """A readable rendering (what a person would see), for logs and the demo transcript."""
        lines = [f"[{self.author.name}]{' (only you can see this)' if self.ephemeral else ''}"]
        if self.loading:
            lines.append(f"{self.author.name} is thinking...")
        if self.content:
            lines.append(self.content)
        for embed in self.embeds:
            if embed.get("author"):
                lines.append(f"  | {embed['author'].get('name', '')}")
            if embed.get("title"):
                lines.append(f"  | **{embed['title']}**")
            if embed.get("description"):
                lines.extend(f"  | {line}" for line in str(embed["description"]).splitlines())
            for embed_field in embed.get("fields") or []:
                lines.append(f"  | {embed_field.get('name')}: {embed_field.get('value')}")
            if embed.get("footer"):
                lines.append(f"  | {embed['footer'].get('text', '')}")
        for attachment in self.attachments:
            lines.append(f"  [file] {attachment.filename} ({attachment.size} bytes)")
        if self.buttons:
            lines.append("  " + " ".join(f"[{b.label or b.custom_id}]" for b in self.buttons))
        return "\n".join(lines)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at) if self.edited_at else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [attachment.to_payload() for attachment in self.attachments],
            "embeds": self.embeds,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": self.components,
        }
        if self.channel.guild is not None:
            payload["guild_id"] = str(self.channel.guild.id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
            payload["webhook_id"] = str(self.application_id)
        if self.interaction is not None:
            payload["interaction_metadata"] = {
                "id": str(self.interaction.id),
                "type": self.interaction.type,
                "user": self.interaction.user.to_payload(),
                "authorizing_integration_owners": self.interaction.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
        return payload


@dataclass(eq=False)
class InteractionHandle:
    """One interaction the double dispatched, and everything the bot answered to it.

    ``responses`` lists every accepted callback type in order; ``errors`` every refused
    request made with this interaction's id or token (status, Discord error code).
    """

    id: int
    token: str
    type: int
    user: User
    channel: Channel
    payload: dict[str, Any]
    dispatched_at: float
    clock_at_dispatch: float
    attachment_size_limit: int
    source_message: StoredMessage | None = None
    responses: list[int] = field(default_factory=list)
    response_payloads: list[dict[str, Any]] = field(default_factory=list)
    deferred_within: float | None = None
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None
    missed_deadline: bool = False
    errors: list[tuple[int, int]] = field(default_factory=list)
    _responded: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def response_type(self) -> int | None:
        """The first callback type (4 message, 5 deferred, 6 deferred update, 7 update, 8 choices, 9 modal)."""
        return self.responses[0] if self.responses else None

    @property
    def responded(self) -> bool:
        return bool(self.responses)

    async def wait_response(self, within: float = 5.0) -> int:
        """Wait for the first callback and return its type; TimeoutError names the interaction."""
        try:
            await asyncio.wait_for(self._responded.wait(), within)
        except TimeoutError:
            raise TimeoutError(
                f"the bot did not answer interaction {self.id} ({self.describe()}) within "
                f"{within} s; check that the command is synced and its handler responds"
            ) from None
        assert self.response_type is not None
        return self.response_type

    async def wait_followup(self, count: int = 1, within: float = 10.0) -> StoredMessage:
        """Wait until ``count`` followups exist and return the latest."""
        await self.wait_until(lambda: len(self.followups) >= count, within, f"{count} followup(s)")
        return self.followups[count - 1]

    async def wait_original(self, within: float = 10.0, *, filled: bool = True) -> StoredMessage:
        """Wait for the original response (by default: one that is no longer "thinking…")."""

        def ready() -> bool:
            return self.original is not None and not (filled and self.original.loading)

        await self.wait_until(ready, within, "the original response")
        assert self.original is not None
        return self.original

    async def wait_until(self, predicate: Callable[[], object], within: float, what: str) -> None:
        """Until ``predicate()`` holds after some change to this interaction (response, followup, error)."""
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(waiter(), within)
        except TimeoutError:
            raise TimeoutError(
                f"waited {within} s for {what} of interaction {self.id} ({self.describe()}); "
                f"responses so far: {self.responses}, errors: {self.errors}"
            ) from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def describe(self) -> str:
        data = self.payload.get("data") or {}
        kind = {2: "command", 3: "component", 4: "autocomplete", 5: "modal submit"}.get(self.type)
        return f"{kind} {data.get('name') or data.get('custom_id')!r} by {self.user.name}"
