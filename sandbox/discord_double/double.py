"""A local stand-in for Discord that a real discord.py client connects to.

``DiscordDouble`` runs an aiohttp server on 127.0.0.1 (a free port) serving the REST API under
``/api/v10`` and a gateway websocket under ``/gateway``. Tests build a world (guilds, channels,
members), act as people (slash commands, autocomplete, button clicks, modal submits: all sent
as real INTERACTION_CREATE payloads), and read back what the bot put on the wire. Discord's rules
are enforced server-side, as Discord does, and every refusal is recorded in ``violations``;
rate limits included (:mod:`sandbox.discord_double.ratelimits`: per-route buckets, 5 messages per 5 s
per channel, interaction-token buckets, the global limit), with ``fail``, ``reset_connections``
and ``rate_limit`` to inject Discord's bad moments.

Usage::

    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "general")
        alice = double.add_member(guild, "alice")
        async with run_bot(bot, double):
            handle = await double.slash(alice, channel, "imagine", {"prompt": "a cat"})
"""

from __future__ import annotations

import asyncio
import datetime
import fnmatch
import mimetypes
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from sandbox.discord_double import gateway as gw
from sandbox.discord_double import options as options_
from sandbox.discord_double.limits import (
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    REQUEST_SIZE_MAX,
    modal_text_inputs,
)
from sandbox.discord_double.ratelimits import RateLimiter
from sandbox.discord_double.records import FaultRule, RateLimitRule, RequestRecord, Violation
from sandbox.discord_double.rest import RestApi
from sandbox.discord_double.state import (
    BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    Channel,
    Guild,
    InteractionHandle,
    Member,
    Role,
    StoredAttachment,
    StoredMessage,
    User,
    snowflake,
)

API_PREFIX = "/api/v10"


UserLike = User | Member


def _user_of(who: UserLike) -> User:
    return who.user if isinstance(who, Member) else who


class DiscordDouble:
    """Discord's API and gateway, local and inspectable. Use as ``async with DiscordDouble()``."""

    def __init__(
        self,
        *,
        token: str = "sandbox.bot.token",
        bot_name: str = "Atelier",
        response_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        request_size_limit: int = REQUEST_SIZE_MAX,
        rate_limits: bool = True,
        nonce_window: float = 5 * 60,
    ) -> None:
        self.token = token
        self.bot_user = User(snowflake(), bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.app_owner = User(snowflake(), "app-owner")
        self.response_deadline = response_deadline
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.request_size_limit = request_size_limit
        self.guilds: list[Guild] = []
        #: Servers the bot was removed from or left, in order.
        self.left_guilds: list[Guild] = []
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user, self.app_owner.id: self.app_owner}
        self.channels: dict[int, Channel] = {}
        self.requests: list[RequestRecord] = []
        self.violations: list[Violation] = []
        self.unserved: list[RequestRecord] = []
        self.interactions: list[InteractionHandle] = []
        self._interactions_by_id: dict[int, InteractionHandle] = {}
        self._interactions_by_token: dict[str, InteractionHandle] = {}
        self.sessions: list[gw.GatewaySession] = []
        self._messages: dict[int, list[StoredMessage]] = {}
        self._messages_by_id: dict[int, StoredMessage] = {}
        self._attachments: dict[int, StoredAttachment] = {}
        #: Attachment ids fetched through the media proxy (``proxy_url``), in order.
        self.proxy_fetches: list[int] = []
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._rate_limits: list[RateLimitRule] = []
        self._faults: list[FaultRule] = []
        #: Discord's buckets and global limit (see :mod:`sandbox.discord_double.ratelimits`); on by default.
        self.limiter = RateLimiter(enabled=rate_limits)
        #: How long a message nonce sent with ``enforce_nonce`` stays unique ("a few minutes").
        self.nonce_window = nonce_window
        self._nonces: dict[str, tuple[float, StoredMessage]] = {}
        self._clock_offset = 0.0
        self._last_intents = 0
        self._message_event = asyncio.Condition()
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._deadline_timers: list[asyncio.TimerHandle] = []
        self._background: set[asyncio.Task[None]] = set()
        self.port = 0
        self.rest = RestApi(self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self.rest.middleware], client_max_size=64 * 1024 * 1024)
        self.rest.add_routes(app)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/gateway/", self._gateway_handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for timer in self._deadline_timers:
            timer.cancel()
        for session in list(self.sessions):
            await session.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be set to."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must point at."""
        return f"ws://127.0.0.1:{self.port}/gateway/"

    # ------------------------------------------------------------------ clock

    def clock(self) -> float:
        """Monotonic seconds plus whatever ``advance_clock`` added: deadlines and token expiry use it."""
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Jump the double's clock forward (15 minutes + 1 s expires every interaction token)."""
        self._clock_offset += seconds

    def expire_token(self, handle: InteractionHandle) -> None:
        """Make one interaction's token as old as Discord's 15-minute lifetime allows, plus one second."""
        handle.clock_at_dispatch = self.clock() - self.token_lifetime - 1

    # ------------------------------------------------------------------ world building

    def add_user(self, name: str, *, bot: bool = False) -> User:
        user = User(snowflake(), name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        *,
        owner_name: str = "owner",
        attachment_size_limit: int | None = None,
        channels: Iterable[str] = (),
    ) -> Guild:
        """A server with its owner and the bot already in it (dispatched if the bot is online).

        ``channels`` are created first, so they are in the GUILD_CREATE a running bot gets as
        it joins (as Discord sends them); the first one is the server's system channel.
        """
        guild_id = snowflake()
        owner = self.add_user(owner_name)
        guild = Guild(
            id=guild_id, name=name, owner_id=owner.id,
            everyone=Role(guild_id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS),
            attachment_size_limit=attachment_size_limit,
        )
        guild.members[owner.id] = Member(owner, guild)
        bot_role = Role(snowflake(), self.bot_user.name, BOT_PERMISSIONS, position=1)
        guild.roles.append(bot_role)
        guild.members[self.bot_user.id] = Member(self.bot_user, guild, [bot_role])
        for channel_name in channels:
            channel = Channel(snowflake(), channel_name, guild, position=len(guild.channels))
            guild.channels.append(channel)
            self.channels[channel.id] = channel
        if guild.channels:
            guild.system_channel_id = guild.channels[0].id
        self.guilds.append(guild)
        joined = guild.to_payload()
        # Without "unavailable", discord.py reads a GUILD_CREATE as a join (on_guild_join).
        joined.pop("unavailable")
        self._broadcast_soon("GUILD_CREATE", joined)
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int = 0) -> Role:
        role = Role(snowflake(), name, permissions, position=len(guild.roles) + 1)
        guild.roles.append(role)
        self._broadcast_soon("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_payload()})
        return role

    def add_member(
        self,
        guild: Guild,
        name: str,
        *,
        permissions: int = 0,
        roles: Iterable[Role] = (),
        user: User | None = None,
    ) -> Member:
        """A member; ``permissions`` (e.g. 0x20 Manage Server) gives them a role of their own with those bits."""
        user = user or self.add_user(name)
        member_roles = list(roles)
        if permissions:
            member_roles.append(self.add_role(guild, f"{name}-permissions", permissions))
        member = Member(user, guild, member_roles)
        guild.members[user.id] = member
        self._broadcast_soon("GUILD_MEMBER_ADD", {**member.to_payload(), "guild_id": str(guild.id)})
        return member

    def add_channel(self, guild: Guild, name: str, *, nsfw: bool = False) -> Channel:
        channel = Channel(snowflake(), name, guild, nsfw=nsfw, position=len(guild.channels))
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self._broadcast_soon("CHANNEL_CREATE", channel.to_payload())
        return channel

    def open_dm(self, user: UserLike) -> Channel:
        """The direct-message channel between ``user`` and the bot (created once)."""
        person = _user_of(user)
        for channel in self.channels.values():
            if channel.is_dm and channel.recipients and channel.recipients[0] is person:
                return channel
        channel = Channel(snowflake(), "", None, type=1, recipients=[person])
        self.channels[channel.id] = channel
        return channel

    def remove_bot(self, guild: Guild) -> None:
        """A server admin kicks the bot: the guild is gone for it, and GUILD_DELETE (without
        ``unavailable``, which would mean an outage) tells the client."""
        self.forget_guild(guild)

    def forget_guild(self, guild: Guild) -> None:
        if guild in self.guilds:
            self.guilds.remove(guild)
            self.left_guilds.append(guild)
            self._broadcast_soon("GUILD_DELETE", {"id": str(guild.id)})

    def guild_by_id(self, guild_id: int) -> Guild | None:
        return next((guild for guild in self.guilds if guild.id == guild_id), None)

    # ------------------------------------------------------------------ observing

    def messages(
        self, channel: Channel, *, include_deleted: bool = False, include_ephemeral: bool = True
    ) -> list[StoredMessage]:
        """The channel's messages, oldest first."""
        return [
            message for message in self._messages.get(channel.id, [])
            if (include_deleted or not message.deleted) and (include_ephemeral or not message.ephemeral)
        ]

    def message_by_id(self, message_id: int) -> StoredMessage | None:
        return self._messages_by_id.get(message_id)

    async def wait_for_message(
        self,
        channel: Channel,
        predicate: Callable[[StoredMessage], bool] | None = None,
        within: float = 10.0,
        *,
        new_only: bool = False,
    ) -> StoredMessage:
        """The first message in ``channel`` matching ``predicate`` (already there, or yet to come).

        ``new_only`` ignores messages that existed when the call was made. Edits count: a message
        edited into a match is returned too.
        """
        check = predicate or (lambda message: True)
        existing = {m.id for m in self._messages.get(channel.id, [])} if new_only else set()

        def find() -> StoredMessage | None:
            for message in self.messages(channel):
                if message.id not in existing and check(message):
                    return message
            return None

        async def waiter() -> StoredMessage:
            async with self._message_event:
                while (found := find()) is None:
                    await self._message_event.wait()
                return found

        try:
            return await asyncio.wait_for(waiter(), within)
        except TimeoutError:
            seen = "\n".join(m.to_text() for m in self.messages(channel)[-5:]) or "(no messages)"
            raise TimeoutError(
                f"no matching message in #{channel.name or channel.id} within {within} s; "
                f"last messages:\n{seen}\nviolations: {[str(v) for v in self.violations]}"
            ) from None

    def registered_commands(self, guild: Guild | None = None) -> list[dict[str, Any]]:
        """The commands the bot last bulk-overwrote, globally or for one guild, as Discord stored them."""
        return list(self._commands.get(guild.id if guild else None, []))

    def rate_limit(
        self,
        route_pattern: str,
        count: int = 1,
        retry_after: float = 0.05,
        *,
        is_global: bool = False,
        cloudflare: bool = False,
    ) -> None:
        """Answer the next ``count`` requests matching ``route_pattern`` with 429.

        The pattern is an fnmatch glob over ``"METHOD /path"`` with the path relative to
        ``/api/v10``, e.g. ``"POST /channels/*/messages"`` or ``"* /webhooks/*"``. Replies carry
        ``retry_after``, the X-RateLimit headers and ``Via`` like Discord's; ``cloudflare=True``
        sends Cloudflare's bare HTML 429 instead (no ``Via``), which discord.py does not retry.
        """
        self._rate_limits.append(RateLimitRule(route_pattern, count, retry_after, is_global, cloudflare))

    def fail(
        self,
        route_pattern: str,
        count: int = 1,
        *,
        status: int = 503,
        code: int = 0,
        message: str = "upstream connect error or disconnect/reset before headers",
    ) -> None:
        """Answer the next ``count`` requests matching ``route_pattern`` with ``status``.

        Discord's edge answers 500, 502, 503 and 504 during incidents; the pattern is the same
        glob as :meth:`rate_limit`. ``status=403, code=50013`` gives a permissions error.
        """
        self._faults.append(FaultRule(route_pattern, count, "http", status, code, message))

    def reset_connections(self, route_pattern: str, count: int = 1) -> None:
        """Drop the connection of the next ``count`` matching requests without an answer."""
        self._faults.append(FaultRule(route_pattern, count, "reset"))

    def requests_matching(self, pattern: str) -> list[RequestRecord]:
        """Requests whose ``"METHOD /path"`` matches an fnmatch glob."""
        return [r for r in self.requests if fnmatch.fnmatchcase(f"{r.method} {r.path}", pattern)]

    async def request_reconnect(self) -> None:
        """Ask every connected client to reconnect (gateway op 7), as Discord does before maintenance.

        discord.py closes the socket, reconnects to READY's ``resume_gateway_url`` and RESUMEs.
        """
        self._connected.clear()
        for session in list(self.sessions):
            await session.send(7, None)

    async def wait_until_connected(self, within: float = 10.0) -> None:
        """Until a client has identified and received READY and every GUILD_CREATE."""
        await asyncio.wait_for(self._connected.wait(), within)

    # ------------------------------------------------------------------ acting as people

    async def slash(
        self,
        user: UserLike,
        channel: Channel,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        locale: str = "en-US",
        bypass_permissions: bool = False,
    ) -> InteractionHandle:
        """Run ``/name [subcommand] options`` as ``user`` would from Discord's client.

        ``subcommand`` is ``"add"`` or ``"group add"``. Options are checked like the client checks
        them (known names, required ones present, choices, ranges) and typed per the registered
        command: pass a User/Member, Channel or Role for those option types, and
        ``(filename, bytes)`` for an attachment. Members lacking the command's
        ``default_member_permissions`` cannot see it (PermissionError) unless ``bypass_permissions``.
        """
        person = _user_of(user)
        command = options_.find_command(self._commands, name, channel)
        options_.check_can_use(command, person, channel, bypass_permissions)
        resolved: dict[str, dict[str, Any]] = {}
        built = options_.build_options(
            command, options or {}, subcommand, resolved, focused=None,
            store_attachment=self._store_option_attachment,
        )
        data: dict[str, Any] = {
            "id": command["id"], "name": command["name"], "type": command.get("type", 1),
            "options": built,
        }
        if resolved:
            data["resolved"] = resolved
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(2, person, channel, data, locale=locale)

    async def message_command(self, user: UserLike, message: StoredMessage, name: str) -> InteractionHandle:
        """Right-click ``message`` -> Apps -> ``name``, as Discord's client sends it (type 3
        command with the message in ``resolved``)."""
        person = _user_of(user)
        command = options_.find_command(self._commands, name, message.channel, kind=3)
        options_.check_can_use(command, person, message.channel, False)
        data: dict[str, Any] = {
            "id": command["id"], "name": command["name"], "type": 3, "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): message.to_payload()}},
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(2, person, message.channel, data)

    async def autocomplete(
        self,
        user: UserLike,
        channel: Channel,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
        within: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Type into option ``focused`` of ``/name`` and return the choices the bot offered.

        ``options`` holds what is typed so far (the focused one included, possibly ``""``).
        Raises AssertionError when the bot's answer was refused (e.g. more than 25 choices).
        """
        handle = await self.autocomplete_handle(user, channel, name, options, focused, subcommand=subcommand)
        await handle.wait_until(lambda: handle.responded or bool(handle.errors), within, "an autocomplete answer")
        if handle.choices is None:
            refusals = [str(v) for v in self.violations if v.interaction_id == handle.id]
            raise AssertionError(
                f"autocomplete for /{name} {focused!r} got no choices: responses {handle.responses}, "
                f"errors {handle.errors}, {refusals}"
            )
        return handle.choices

    async def autocomplete_handle(
        self,
        user: UserLike,
        channel: Channel,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
    ) -> InteractionHandle:
        """Like :meth:`autocomplete` but returns the handle without waiting (to inspect refusals)."""
        command = options_.find_command(self._commands, name, channel)
        built = options_.build_options(
            command, options, subcommand, {}, focused=focused, store_attachment=self._store_option_attachment
        )
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": built}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(4, _user_of(user), channel, data)

    async def click(
        self,
        user: UserLike,
        message: StoredMessage,
        custom_id: str,
        *,
        values: list[str] | None = None,
    ) -> InteractionHandle:
        """Press a button (or choose ``values`` in a select) on ``message``."""
        person = _user_of(user)
        if message.deleted:
            raise ValueError(f"message {message.id} was deleted; nobody can click it any more")
        component = message.find_component(custom_id)
        if component is None:
            ids = [b.custom_id for b in message.buttons]
            raise LookupError(f"message {message.id} has no component {custom_id!r} (buttons: {ids})")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord's client will not send the click")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] in (3, 5, 6, 7, 8):
            data["values"] = list(values or [])
        return await self._dispatch_interaction(3, person, message.channel, data, message=message)

    async def submit_modal(
        self, user: UserLike, source: InteractionHandle, values: Mapping[str, str]
    ) -> InteractionHandle:
        """Fill and submit the modal the bot opened in answer to ``source``.

        ``values`` maps text-input custom ids to text; inputs left out keep their prefilled value.
        Required inputs left empty raise ValueError, as the client refuses to submit them.
        """
        if source.modal is None:
            raise ValueError(
                f"interaction {source.id} ({source.describe()}) was not answered with a modal "
                f"(responses: {source.responses})"
            )
        modal = source.modal
        known = {component.get("custom_id") for component in modal_text_inputs(modal)}
        unknown = set(values) - known
        if unknown:
            raise LookupError(f"modal {modal.get('custom_id')!r} has no inputs {sorted(unknown)} (it has {sorted(known)})")

        def answered(component: dict[str, Any]) -> dict[str, Any]:
            custom_id = component.get("custom_id")
            value = values.get(custom_id, component.get("value") or "")  # type: ignore[arg-type]
            if component.get("required", True) and not value:
                raise ValueError(f"modal input {custom_id!r} is required")
            if len(value) > int(component.get("max_length") or 4000):
                raise ValueError(f"modal input {custom_id!r} allows {component.get('max_length')} characters")
            return {"type": component.get("type", 4), "id": component.get("id", 0), "custom_id": custom_id, "value": value}

        components: list[dict[str, Any]] = []
        for component in modal.get("components") or []:
            if component.get("type") == 1:
                components.append({"type": 1, "id": component.get("id", 0), "components": [
                    answered(child) for child in component.get("components") or []
                ]})
            elif component.get("type") == 18:
                components.append({"type": 18, "id": component.get("id", 0),
                                   "component": answered(component["component"])})
        data = {"custom_id": modal.get("custom_id"), "components": components}
        return await self._dispatch_interaction(
            5, _user_of(user), source.channel, data, message=source.source_message
        )

    async def send_user_message(
        self, user: UserLike, channel: Channel, content: str, *, files: Iterable[tuple[str, bytes]] = ()
    ) -> StoredMessage:
        """A person posting in a channel (dispatched as MESSAGE_CREATE), with ``files`` as
        ``(filename, bytes)`` attachments served from the double's CDN."""
        attachments = [
            self.store_attachment(
                StoredAttachment(snowflake(), name, bytes(data), mimetypes.guess_type(name)[0] or "application/octet-stream"),
                channel.id,
            )
            for name, data in files
        ]
        message = StoredMessage(snowflake(), channel, _user_of(user), content=content, attachments=attachments)
        await self.store_message(message)
        return message

    # ------------------------------------------------------------------ internals used by RestApi

    def _broadcast_soon(self, event: str, data: dict[str, Any]) -> None:
        """Dispatch from a synchronous world-building call; tasks run in call order."""
        if not self.sessions:
            return
        task = asyncio.get_running_loop().create_task(self.broadcast(event, data))
        self._background.add(task)  # a task nobody references can be garbage-collected mid-way
        task.add_done_callback(self._background.discard)

    async def broadcast(self, event: str, data: dict[str, Any], intent: int = 0) -> None:
        for session in list(self.sessions):
            if session.identified.is_set() and (not intent or session.wants(intent)):
                await session.dispatch(event, data)

    async def _notify_messages(self) -> None:
        async with self._message_event:
            self._message_event.notify_all()

    async def store_message(self, message: StoredMessage) -> None:
        self._messages.setdefault(message.channel.id, []).append(message)
        self._messages_by_id[message.id] = message
        if not message.ephemeral:
            await self.broadcast("MESSAGE_CREATE", message.to_payload(), self._message_intent(message))
        await self._notify_messages()

    async def message_updated(self, message: StoredMessage) -> None:
        message.edited_at = datetime.datetime.now(datetime.UTC)
        message.edits += 1
        if not message.ephemeral:
            await self.broadcast("MESSAGE_UPDATE", message.to_payload(), self._message_intent(message))
        await self._notify_messages()

    async def message_deleted(self, message: StoredMessage) -> None:
        message.deleted = True
        if not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel.id)}
            if message.channel.guild is not None:
                data["guild_id"] = str(message.channel.guild.id)
            await self.broadcast("MESSAGE_DELETE", data, self._message_intent(message))
        await self._notify_messages()

    @staticmethod
    def _message_intent(message: StoredMessage) -> int:
        return gw.DIRECT_MESSAGES_INTENT if message.channel.is_dm else gw.GUILD_MESSAGES_INTENT

    def store_attachment(self, attachment: StoredAttachment, channel_id: int) -> StoredAttachment:
        filename = urllib.parse.quote(attachment.filename)
        attachment.url = f"{self.base_url}/attachments/{channel_id}/{attachment.id}/{filename}"
        attachment.proxy_url = f"{self.base_url}/media-proxy/{channel_id}/{attachment.id}/{filename}?format=webp"
        self._attachments[attachment.id] = attachment
        return attachment

    def _store_option_attachment(self, filename: str, data: bytes) -> StoredAttachment:
        """A file a person attached to a command option, uploaded to the double's CDN."""
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return self.store_attachment(StoredAttachment(snowflake(), filename, data, content_type), 0)

    def attachment_by_id(self, attachment_id: int) -> StoredAttachment | None:
        return self._attachments.get(attachment_id)

    def record_violation(self, violation: Violation) -> None:
        self.violations.append(violation)

    def size_limit_for(self, channel: Channel) -> int:
        if channel.guild is not None and channel.guild.attachment_size_limit:
            return channel.guild.attachment_size_limit
        return self.attachment_size_limit

    def interaction_by_id(self, interaction_id: int) -> InteractionHandle | None:
        return self._interactions_by_id.get(interaction_id)

    def interaction_by_token(self, token: str) -> InteractionHandle | None:
        return self._interactions_by_token.get(token)

    def app_permissions(self, channel: Channel) -> int:
        if channel.guild is None:
            return DEFAULT_EVERYONE_PERMISSIONS
        return channel.guild.members[self.bot_user.id].permissions

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self._faults:
            if rule.remaining > 0 and fnmatch.fnmatchcase(f"{method} {path}", rule.pattern):
                rule.remaining -= 1
                return rule
        return None

    def message_for_nonce(self, author: User, nonce: str) -> StoredMessage | None:
        """The message ``author`` created with ``nonce`` within the nonce window, if any."""
        found = self._nonces.get(f"{author.id}:{nonce}")
        if found is None or time.monotonic() - found[0] > self.nonce_window:
            return None
        return found[1]

    def remember_nonce(self, author: User, nonce: str, message: StoredMessage) -> None:
        self._nonces[f"{author.id}:{nonce}"] = (time.monotonic(), message)

    def take_rate_limit(self, method: str, path: str) -> RateLimitRule | None:
        for rule in self._rate_limits:
            if rule.remaining > 0 and fnmatch.fnmatchcase(f"{method} {path}", rule.pattern):
                rule.remaining -= 1
                return rule
        return None

    def _on_session_identified(self, session: gw.GatewaySession) -> None:
        self._last_intents = session.intents
        self._connected.set()

    async def _gateway_handler(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        session = gw.GatewaySession(self, socket)
        self.sessions.append(session)
        try:
            await session.run()
        finally:
            self.sessions.remove(session)
            if not any(s.identified.is_set() for s in self.sessions):
                self._connected.clear()
        return socket

    # ------------------------------------------------------------------ interaction dispatch

    async def _dispatch_interaction(
        self,
        kind: int,
        user: User,
        channel: Channel,
        data: dict[str, Any],
        *,
        message: StoredMessage | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        if not any(session.identified.is_set() for session in self.sessions):
            raise RuntimeError("no bot is connected to the double's gateway; start it with run_bot()")
        guild = channel.guild
        size_limit = self.size_limit_for(channel)
        payload: dict[str, Any] = {
            "id": str(snowflake()),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            "version": 1,
            "locale": locale,
            "app_permissions": str(self.app_permissions(channel)),
            "attachment_size_limit": size_limit,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "channel": {**channel.to_payload(), "permissions": str(self._user_permissions(user, channel))},
            "channel_id": str(channel.id),
        }
        if guild is not None:
            payload["guild_id"] = str(guild.id)
            payload["guild_locale"] = "en-US"
            payload["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
            payload["member"] = guild.member(user).to_payload(with_permissions=True)
            payload["authorizing_integration_owners"] = {"0": str(guild.id)}
            payload["context"] = 0
        else:
            payload["user"] = user.to_payload()
            payload["authorizing_integration_owners"] = {"0": "0"}
            payload["context"] = 1
        if message is not None:
            payload["message"] = message.to_payload()
        handle = InteractionHandle(
            id=int(payload["id"]), token=payload["token"], type=kind, user=user, channel=channel,
            payload=payload, dispatched_at=time.monotonic(), clock_at_dispatch=self.clock(),
            attachment_size_limit=size_limit, source_message=message,
        )
        self.interactions.append(handle)
        self._interactions_by_id[handle.id] = handle
        self._interactions_by_token[handle.token] = handle
        self._deadline_timers.append(
            asyncio.get_running_loop().call_later(self.response_deadline, self._check_deadline, handle)
        )
        await self.broadcast("INTERACTION_CREATE", payload)
        return handle

    def _user_permissions(self, user: User, channel: Channel) -> int:
        if channel.guild is None:
            return DEFAULT_EVERYONE_PERMISSIONS
        return channel.guild.member(user).permissions

    def _check_deadline(self, handle: InteractionHandle) -> None:
        if handle.responses or handle.missed_deadline:
            return
        handle.missed_deadline = True
        self.record_violation(Violation(
            "interaction_deadline_missed", "POST", f"/interactions/{handle.id}/<token>/callback",
            0, 10062, [f"no response to {handle.describe()} within {self.response_deadline} s: "
                       "the user sees 'The application did not respond'"],
            interaction_id=handle.id,
        ))

