"""The REST half of the double: the endpoints a discord.py 2.7 bot calls, with Discord's rules.

Each handler mirrors one ``Route`` of discord.py's ``http.py`` or ``webhook/async_.py``.
Requests are logged in ``double.requests``; requests to paths nobody serves land in
``double.unserved`` (404) so a test can tell "the double lacks this" from "the bot broke a rule".
"""

from __future__ import annotations

import math
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.discord_double.limits import (
    ALREADY_ACKNOWLEDGED,
    INVALID_WEBHOOK_TOKEN,
    UNKNOWN_CHANNEL,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    FormErrors,
    check_choices,
    check_commands,
    check_message,
    check_modal,
)
from sandbox.discord_double.records import RECORD_KEY, RateLimitRule, RequestRecord, Violation
from sandbox.discord_double.state import (
    EPHEMERAL,
    LOADING,
    MANAGE_MESSAGES,
    Channel,
    InteractionHandle,
    StoredAttachment,
    StoredMessage,
    snowflake,
)
from sandbox.discord_double.wire import (
    DiscordHTTPError,
    UploadedFile,
    json_reply,
    no_content,
    read_body,
)

if TYPE_CHECKING:
    from sandbox.discord_double.double import DiscordDouble

API_PREFIX = "/api/v10"
# Callback types each interaction type accepts (4 message, 5 deferred message, 6 deferred
# update, 7 update, 8 autocomplete result, 9 modal).
ALLOWED_CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_REPLY = 19
MESSAGE_TYPE_CHAT_INPUT = 20


def _form_error(errors: FormErrors, kind: str, interaction_id: int | None = None) -> DiscordHTTPError:
    error = DiscordHTTPError(
        400, 50035, "Invalid Form Body", body=errors.to_body(), violation=kind,
        details=[str(item) for item in errors.items],
    )
    error.interaction_id = interaction_id  # type: ignore[attr-defined]
    return error


class RestApi:
    """Routes and handlers; all state lives on the :class:`DiscordDouble`."""

    def __init__(self, double: DiscordDouble) -> None:
        self.double = double
        self.verify_key = secrets.token_hex(32)

    # ------------------------------------------------------------------ plumbing

    def add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        app.router.add_get(p + "/users/@me", self.get_current_user)
        app.router.add_get(p + "/oauth2/applications/@me", self.get_application)
        app.router.add_get(p + "/gateway", self.get_gateway)
        app.router.add_get(p + "/gateway/bot", self.get_gateway_bot)
        app.router.add_route("*", p + "/applications/{app}/commands", self.commands)
        app.router.add_route("*", p + "/applications/{app}/guilds/{guild}/commands", self.commands)
        app.router.add_post(p + "/interactions/{id}/{token}/callback", self.interaction_callback)
        app.router.add_post(p + "/webhooks/{app}/{token}", self.webhook_execute)
        app.router.add_route("*", p + "/webhooks/{app}/{token}/messages/{message}", self.webhook_message)
        app.router.add_post(p + "/users/@me/channels", self.open_dm)
        app.router.add_delete(p + "/users/@me/guilds/{guild}", self.leave_guild)
        app.router.add_get(p + "/users/{user}", self.get_user)
        app.router.add_get(p + "/channels/{channel}", self.get_channel)
        app.router.add_post(p + "/channels/{channel}/typing", self.typing)
        app.router.add_route("*", p + "/channels/{channel}/messages", self.channel_messages)
        app.router.add_route("*", p + "/channels/{channel}/messages/{message}", self.channel_message)
        app.router.add_get(p + "/guilds/{guild}", self.get_guild)
        app.router.add_get(p + "/guilds/{guild}/channels", self.get_guild_channels)
        app.router.add_get(p + "/guilds/{guild}/roles", self.get_guild_roles)
        app.router.add_get(p + "/guilds/{guild}/members/{user}", self.get_member)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self.cdn)
        app.router.add_get("/media-proxy/{channel}/{attachment}/{filename}", self.media_proxy)
        app.router.add_route("*", p + "/{tail:.*}", self.unserved)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        double = self.double
        is_api = request.path.startswith(API_PREFIX)
        path = request.path[len(API_PREFIX):] if is_api else request.path
        record = RequestRecord(request.method, path, dict(request.query), started_at=time.monotonic())
        request[RECORD_KEY] = record
        if is_api:
            double.requests.append(record)
        response: web.StreamResponse
        limits = None
        try:
            rule = double.take_rate_limit(request.method, path) if is_api else None
            fault = double.take_fault(request.method, path) if is_api and rule is None else None
            if is_api and rule is None:
                authenticated = request.headers.get("Authorization") == f"Bot {double.token}"
                limits = double.limiter.check(request.method, path, authenticated=authenticated)
            if rule is not None:
                record.rate_limited = True
                response = self._too_many_requests(rule)
            elif limits is not None and limits.retry_after is not None:
                record.rate_limited = True
                response = self._refused_by_limiter(limits)
            elif fault is not None:
                record.fault = fault.kind
                if fault.kind == "reset":
                    # The connection dies before any answer, as when Discord's edge resets it.
                    if request.transport is not None:
                        request.transport.abort()
                    raise ConnectionResetError("connection reset by the double")
                response = json_reply({"message": fault.message, "code": fault.code}, fault.status)
            else:
                if is_api and self._needs_bot_auth(path):
                    if request.headers.get("Authorization") != f"Bot {double.token}":
                        raise DiscordHTTPError(401, 0, "401: Unauthorized")
                response = await handler(request)
        except DiscordHTTPError as error:
            record.error_code = error.code
            interaction_id = getattr(error, "interaction_id", None)
            if error.violation:
                double.record_violation(Violation(
                    error.violation, request.method, path, error.status, error.code, error.details,
                    interaction_id=interaction_id,
                ))
            if interaction_id is not None:
                handle = double.interaction_by_id(interaction_id)
                if handle is not None:
                    handle.errors.append((error.status, error.code))
                    await handle._notify()
            response = error.to_response()
        if limits is not None and limits.retry_after is None:
            response.headers.update(limits.headers)
        if is_api and double.limiter.count_invalid(response.status):
            double.record_violation(Violation(
                "invalid_request_limit", request.method, path, response.status, None,
                ["10,000 invalid requests (401/403/429) within 10 minutes: Cloudflare bans the IP"],
            ))
        record.status = response.status
        record.duration = time.monotonic() - record.started_at
        return response

    @staticmethod
    def _needs_bot_auth(path: str) -> bool:
        return not (path.startswith("/interactions/") or path.startswith("/webhooks/"))

    @staticmethod
    def _refused_by_limiter(decision: Any) -> web.Response:
        body = {"message": "You are being rate limited.", "retry_after": round(decision.retry_after, 3),
                "global": decision.is_global}
        return json_reply(body, 429, decision.headers)

    @staticmethod
    def _too_many_requests(rule: RateLimitRule) -> web.Response:
        if rule.cloudflare:
            return web.Response(status=429, text="<html>error code: 1015</html>", content_type="text/html")
        headers = {
            "Retry-After": str(max(1, math.ceil(rule.retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
            "X-RateLimit-Bucket": "atelier-double-bucket",
            "X-RateLimit-Scope": "global" if rule.is_global else "user",
            # discord.py treats a 429 without Via as a Cloudflare ban and gives up.
            "Via": "1.1 google",
        }
        if rule.is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": rule.retry_after,
                "global": rule.is_global}
        return json_reply(body, 429, headers)

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
        payload, files = await read_body(request, self.double.request_size_limit)
        record = request[RECORD_KEY]
        record.payload = payload
        record.files = [f.filename for f in files]
        return payload, files

    async def unserved(self, request: web.Request) -> web.Response:
        self.double.unserved.append(request[RECORD_KEY])
        return json_reply({"message": "404: Not Found", "code": 0}, 404)

    # ------------------------------------------------------------------ identity

    async def get_current_user(self, request: web.Request) -> web.Response:
        user = self.double.bot_user.to_payload()
        user.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US",
                     "banner": None, "accent_color": None})
        return json_reply(user)

    async def get_application(self, request: web.Request) -> web.Response:
        double = self.double
        return json_reply({
            "id": str(double.application_id),
            "name": double.bot_user.name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": self.verify_key,
            "flags": 0,
            "owner": double.app_owner.to_payload(),
            "team": None,
            "bot": double.bot_user.to_payload(),
            "redirect_uris": [],
            "tags": [],
            "approximate_guild_count": len(double.guilds),
            "integration_types_config": {"0": {}},
            "interactions_endpoint_url": None,
        })

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_reply({"url": self.double.gateway_url.rstrip("/")})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_reply({
            "url": self.double.gateway_url.rstrip("/"),
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        })

    # ------------------------------------------------------------------ commands

    async def commands(self, request: web.Request) -> web.Response:
        double = self.double
        if int(request.match_info["app"]) != double.application_id:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        guild_id = int(request.match_info["guild"]) if "guild" in request.match_info else None
        if guild_id is not None and double.guild_by_id(guild_id) is None:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        if request.method == "GET":
            return json_reply(double._commands.get(guild_id, []))
        if request.method != "PUT":
            return await self.unserved(request)
        payload, _ = await self._body(request)
        commands: list[dict[str, Any]] = payload if isinstance(payload, list) else []
        errors = FormErrors()
        check_commands(errors, commands)
        if errors:
            raise _form_error(errors, "invalid_commands")
        previous = {(c["name"], c.get("type", 1)): c["id"] for c in double._commands.get(guild_id, [])}
        stored = []
        for command in commands:
            command_type = int(command.get("type", 1))
            entry: dict[str, Any] = {
                "id": previous.get((command["name"], command_type)) or str(snowflake()),
                "application_id": str(double.application_id),
                "version": str(snowflake()),
                "type": command_type,
                "name": command["name"],
                "name_localizations": command.get("name_localizations"),
                "description": command.get("description", ""),
                "description_localizations": command.get("description_localizations"),
                "options": command.get("options") or [],
                "default_member_permissions": (
                    None if command.get("default_member_permissions") is None
                    else str(command["default_member_permissions"])
                ),
                "dm_permission": command.get("dm_permission", True),
                "contexts": command.get("contexts"),
                "integration_types": command.get("integration_types") or [0],
                "nsfw": bool(command.get("nsfw", False)),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        double._commands[guild_id] = stored
        return json_reply(stored)

    # ------------------------------------------------------------------ interactions

    async def interaction_callback(self, request: web.Request) -> web.Response:
        double = self.double
        handle = double.interaction_by_id(int(request.match_info["id"]))
        if handle is None or handle.token != request.match_info["token"]:
            raise DiscordHTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if handle.responses:
            error = DiscordHTTPError(
                400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.",
                violation="interaction_already_acknowledged",
                details=[f"second response to {handle.describe()} (first was type {handle.response_type})"],
            )
            error.interaction_id = handle.id  # type: ignore[attr-defined]
            raise error
        if double.clock() - handle.clock_at_dispatch > double.response_deadline:
            # The watchdog timer runs on real time; a moved clock can expire the deadline first.
            double._check_deadline(handle)
            error = DiscordHTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
            error.interaction_id = handle.id  # type: ignore[attr-defined]
            raise error
        payload, files = await self._body(request)
        callback_type = int(payload.get("type", 0))
        data = payload.get("data") or {}
        errors = FormErrors()
        if callback_type not in ALLOWED_CALLBACKS.get(handle.type, set()):
            errors.add(("type",), "INTERACTION_RESPONSE_TYPE_INVALID",
                       f"Callback type {callback_type} is not valid for interaction type {handle.type}")
        elif callback_type == 7 and handle.source_message is None:
            # Type 6 stays valid without a message: it just acknowledges (discord.py's defer()
            # on a modal submit sends it); type 7 must have a message to update.
            errors.add(("type",), "INTERACTION_RESPONSE_TYPE_INVALID",
                       "There is no message to update for this interaction")
        elif callback_type in (4, 7):
            self._check_files(files, handle.attachment_size_limit)
            check_message(errors, data, creating=callback_type == 4, file_count=len(files))
        elif callback_type == 8:
            check_choices(errors, data.get("choices") or [])
        elif callback_type == 9:
            check_modal(errors, data)
        if errors:
            raise _form_error(errors, "invalid_interaction_response", handle.id)

        handle.deferred_within = time.monotonic() - handle.dispatched_at
        handle.responses.append(callback_type)
        handle.response_payloads.append(payload)
        resource_message: StoredMessage | None = None
        if callback_type == 4:
            resource_message = await self._create_message(
                handle.channel, data, files, handle=handle,
                message_type=MESSAGE_TYPE_CHAT_INPUT if handle.type == 2 else MESSAGE_TYPE_DEFAULT,
            )
            handle.original = resource_message
        elif callback_type == 5:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            resource_message = StoredMessage(
                snowflake(), handle.channel, double.bot_user, flags=flags,
                type=MESSAGE_TYPE_CHAT_INPUT if handle.type == 2 else MESSAGE_TYPE_DEFAULT,
                application_id=double.application_id, interaction=handle,
            )
            await double.store_message(resource_message)
            handle.original = resource_message
        elif callback_type in (6, 7):
            handle.original = handle.source_message
            if callback_type == 7 and handle.source_message is not None:
                await self._edit_message(handle.source_message, data, files)
                resource_message = handle.source_message
        elif callback_type == 8:
            handle.choices = list(data.get("choices") or [])
        elif callback_type == 9:
            handle.modal = data
        handle._responded.set()
        await handle._notify()

        if request.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        body: dict[str, Any] = {"interaction": interaction}
        if resource_message is not None:
            interaction["response_message_id"] = str(resource_message.id)
            interaction["response_message_loading"] = resource_message.loading
            interaction["response_message_ephemeral"] = resource_message.ephemeral
            body["resource"] = {"type": callback_type, "message": resource_message.to_payload()}
        return json_reply(body)

    def _webhook_handle(self, request: web.Request) -> InteractionHandle:
        """The interaction behind ``/webhooks/{app}/{token}``; refuses unknown or expired tokens."""
        double = self.double
        if int(request.match_info["app"]) != double.application_id:
            raise DiscordHTTPError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        handle = double.interaction_by_token(request.match_info["token"])
        if handle is None:
            raise DiscordHTTPError(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        age = double.clock() - handle.clock_at_dispatch
        if age > double.token_lifetime:
            error = DiscordHTTPError(
                401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token", violation="interaction_token_expired",
                details=[f"token of {handle.describe()} used {age:.0f} s after the interaction "
                         f"(lifetime {double.token_lifetime:.0f} s): post long results as channel messages"],
            )
            error.interaction_id = handle.id  # type: ignore[attr-defined]
            raise error
        if not handle.responses:
            error = DiscordHTTPError(
                404, UNKNOWN_WEBHOOK, "Unknown Webhook", violation="webhook_before_response",
                details=[f"{handle.describe()} was not acknowledged yet: respond or defer first"],
            )
            error.interaction_id = handle.id  # type: ignore[attr-defined]
            raise error
        return handle

    async def webhook_execute(self, request: web.Request) -> web.Response:
        """A followup message (``POST /webhooks/{app}/{token}``)."""
        handle = self._webhook_handle(request)
        payload, files = await self._body(request)
        self._check_files(files, handle.attachment_size_limit, handle)
        errors = FormErrors()
        check_message(errors, payload, creating=True, file_count=len(files))
        if errors:
            raise _form_error(errors, "invalid_message", handle.id)
        original = handle.original
        if handle.response_type == 5 and original is not None and original.loading and not handle.followups:
            # Discord fills the deferred "thinking…" message with the first followup.
            original.flags &= ~LOADING
            await self._edit_message(original, payload, files)
            message = original
        else:
            message = await self._create_message(handle.channel, payload, files, handle=handle)
        handle.followups.append(message)
        await handle._notify()
        return json_reply(message.to_payload())

    async def webhook_message(self, request: web.Request) -> web.StreamResponse:
        """``GET/PATCH/DELETE /webhooks/{app}/{token}/messages/{@original|id}``."""
        handle = self._webhook_handle(request)
        target = request.match_info["message"]
        if target == "@original":
            message = handle.original
        else:
            wanted = int(target) if target.isdigit() else -1
            candidates = [handle.original, *handle.followups]
            message = next((m for m in candidates if m is not None and m.id == wanted), None)
        if message is None or message.deleted:
            raise DiscordHTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        if request.method == "GET":
            return json_reply(message.to_payload())
        if request.method == "DELETE":
            await self.double.message_deleted(message)
            await handle._notify()
            return no_content()
        if request.method != "PATCH":
            return await self.unserved(request)
        payload, files = await self._body(request)
        self._check_files(files, handle.attachment_size_limit, handle)
        errors = FormErrors()
        check_message(errors, payload, creating=False, file_count=len(files))
        if errors:
            raise _form_error(errors, "invalid_message", handle.id)
        message.flags &= ~LOADING
        await self._edit_message(message, payload, files)
        await handle._notify()
        return json_reply(message.to_payload())

    # ------------------------------------------------------------------ channels and messages

    def _channel(self, request: web.Request) -> Channel:
        raw = request.match_info["channel"]
        channel = self.double.channels.get(int(raw)) if raw.isdigit() else None
        if channel is None:
            raise DiscordHTTPError(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def _channel_message(self, request: web.Request, channel: Channel) -> StoredMessage:
        raw = request.match_info["message"]
        message = self.double.message_by_id(int(raw)) if raw.isdigit() else None
        if message is None or message.deleted or message.ephemeral or message.channel is not channel:
            raise DiscordHTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_reply(self._channel(request).to_payload())

    async def leave_guild(self, request: web.Request) -> web.Response:
        """``Guild.leave()``: 204, then GUILD_DELETE on the gateway, as Discord does."""
        self.double.forget_guild(self._guild(request))
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return no_content()

    async def channel_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if request.method == "GET":
            visible = [m for m in self.double.messages(channel) if not m.ephemeral]
            if "before" in request.query:
                visible = [m for m in visible if m.id < int(request.query["before"])]
            if "after" in request.query:
                visible = [m for m in visible if m.id > int(request.query["after"])]
            limit = min(100, int(request.query.get("limit", 50)))
            newest_first = list(reversed(visible))[:limit]
            return json_reply([m.to_payload() for m in newest_first])
        if request.method != "POST":
            return await self.unserved(request)
        payload, files = await self._body(request)
        self._check_files(files, self.double.size_limit_for(channel))
        errors = FormErrors()
        check_message(errors, payload, creating=True, file_count=len(files))
        if errors:
            raise _form_error(errors, "invalid_message")
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord: "If another message was created by the same author with the same nonce,
            # that message will be returned and no new message will be created."
            earlier = self.double.message_for_nonce(self.double.bot_user, str(nonce))
            if earlier is not None:
                return json_reply({**earlier.to_payload(), "nonce": str(nonce)})
        message_type = MESSAGE_TYPE_REPLY if payload.get("message_reference") else MESSAGE_TYPE_DEFAULT
        payload = {**payload, "flags": int(payload.get("flags") or 0) & ~EPHEMERAL}
        message = await self._create_message(channel, payload, files, message_type=message_type)
        reply = message.to_payload()
        if nonce is not None:
            reply["nonce"] = str(nonce)
            if payload.get("enforce_nonce"):
                self.double.remember_nonce(self.double.bot_user, str(nonce), message)
        return json_reply(reply)

    async def channel_message(self, request: web.Request) -> web.StreamResponse:
        channel = self._channel(request)
        message = self._channel_message(request, channel)
        double = self.double
        if request.method == "GET":
            return json_reply(message.to_payload())
        if request.method == "DELETE":
            if message.author is not double.bot_user:
                allowed = channel.guild is not None and bool(double.app_permissions(channel) & MANAGE_MESSAGES)
                if not allowed:
                    raise DiscordHTTPError(403, 50013, "Missing Permissions")
            await double.message_deleted(message)
            return no_content()
        if request.method != "PATCH":
            return await self.unserved(request)
        if message.author is not double.bot_user:
            raise DiscordHTTPError(403, 50005, "Cannot edit a message authored by another user")
        payload, files = await self._body(request)
        self._check_files(files, double.size_limit_for(channel))
        errors = FormErrors()
        check_message(errors, payload, creating=False, file_count=len(files))
        if errors:
            raise _form_error(errors, "invalid_message")
        await self._edit_message(message, payload, files)
        return json_reply(message.to_payload())

    async def open_dm(self, request: web.Request) -> web.Response:
        payload, _ = await self._body(request)
        user = self.double.users.get(int(payload.get("recipient_id", 0)))
        if user is None:
            raise DiscordHTTPError(404, 10013, "Unknown User")
        return json_reply(self.double.open_dm(user).to_payload())

    async def get_user(self, request: web.Request) -> web.Response:
        raw = request.match_info["user"]
        user = self.double.users.get(int(raw)) if raw.isdigit() else None
        if user is None:
            raise DiscordHTTPError(404, 10013, "Unknown User")
        return json_reply(user.to_payload())

    def _guild(self, request: web.Request) -> Any:
        raw = request.match_info["guild"]
        guild = self.double.guild_by_id(int(raw)) if raw.isdigit() else None
        if guild is None:
            raise DiscordHTTPError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        payload = self._guild(request).to_payload()
        payload.pop("members", None)
        payload.pop("channels", None)
        return json_reply(payload)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_reply([channel.to_payload() for channel in self._guild(request).channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_reply([role.to_payload() for role in [guild.everyone, *guild.roles]])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        raw = request.match_info["user"]
        member = guild.members.get(int(raw)) if raw.isdigit() else None
        if member is None:
            raise DiscordHTTPError(404, 10007, "Unknown Member")
        return json_reply(member.to_payload())

    async def cdn(self, request: web.Request) -> web.Response:
        raw = request.match_info["attachment"]
        attachment = self.double.attachment_by_id(int(raw)) if raw.isdigit() else None
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})

    async def media_proxy(self, request: web.Request) -> web.Response:
        """Discord's media proxy (``proxy_url``): images come back as a WebP preview, which has
        lost the PNG's text chunks, as Discord's does for ``format=webp``."""
        raw = request.match_info["attachment"]
        attachment = self.double.attachment_by_id(int(raw)) if raw.isdigit() else None
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        self.double.proxy_fetches.append(attachment.id)
        if not attachment.content_type.startswith("image/"):
            return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})
        import io

        from PIL import Image

        with Image.open(io.BytesIO(attachment.data)) as image:
            out = io.BytesIO()
            image.convert("RGBA").save(out, format="WEBP")
        return web.Response(body=out.getvalue(), headers={"Content-Type": "image/webp"})

    # ------------------------------------------------------------------ message building

    def _check_files(
        self, files: list[UploadedFile], limit: int, handle: InteractionHandle | None = None
    ) -> None:
        too_big = [f for f in files if len(f.data) > limit]
        if too_big:
            error = DiscordHTTPError(
                413, 40005, "Request entity too large", violation="file_too_large",
                details=[f"{f.filename}: {len(f.data)} bytes > attachment_size_limit {limit}" for f in too_big],
            )
            error.interaction_id = handle.id if handle else None  # type: ignore[attr-defined]
            raise error

    def _attachments(
        self,
        channel: Channel,
        payload: dict[str, Any],
        files: list[UploadedFile],
        existing: list[StoredAttachment],
    ) -> list[StoredAttachment]:
        by_index = {f.index: f for f in files}
        kept = {a.id: a for a in existing}
        result: list[StoredAttachment] = []
        used: set[int] = set()
        for entry in payload.get("attachments") or []:
            entry_id = int(entry.get("id", -1))
            if entry_id in by_index and entry_id not in used:
                upload = by_index[entry_id]
                used.add(entry_id)
                attachment = StoredAttachment(
                    snowflake(), entry.get("filename") or upload.filename, upload.data,
                    upload.content_type, entry.get("description"),
                )
                result.append(self.double.store_attachment(attachment, channel.id))
            elif entry_id in kept:
                result.append(kept[entry_id])
        for upload in files:
            if upload.index not in used:
                attachment = StoredAttachment(snowflake(), upload.filename, upload.data, upload.content_type)
                result.append(self.double.store_attachment(attachment, channel.id))
        return result

    async def _create_message(
        self,
        channel: Channel,
        payload: dict[str, Any],
        files: list[UploadedFile],
        *,
        handle: InteractionHandle | None = None,
        message_type: int = MESSAGE_TYPE_DEFAULT,
    ) -> StoredMessage:
        double = self.double
        message = StoredMessage(
            snowflake(), channel, double.bot_user,
            content=payload.get("content") or "",
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=self._attachments(channel, payload, files, []),
            flags=int(payload.get("flags") or 0),
            type=message_type,
            application_id=double.application_id if handle else None,
            interaction=handle,
        )
        _resolve_attachment_urls(message)
        await double.store_message(message)
        return message

    async def _edit_message(
        self, message: StoredMessage, payload: dict[str, Any], files: list[UploadedFile]
    ) -> None:
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "attachments" in payload:
            message.attachments = self._attachments(message.channel, payload, files, message.attachments)
        elif files:
            message.attachments = message.attachments + self._attachments(message.channel, {}, files, [])
        if "flags" in payload and payload["flags"] is not None:
            message.flags = (message.flags & (EPHEMERAL | LOADING)) | (int(payload["flags"]) & ~EPHEMERAL)
        _resolve_attachment_urls(message)
        await self.double.message_updated(message)


def _resolve_attachment_urls(message: StoredMessage) -> None:
    """``attachment://name`` in an embed becomes the file's CDN URL, as Discord stores it."""
    urls = {attachment.filename: attachment.url for attachment in message.attachments}
    for embed in message.embeds:
        for key, url_key in (("image", "url"), ("thumbnail", "url"), ("author", "icon_url"),
                             ("footer", "icon_url")):
            part = embed.get(key)
            if isinstance(part, dict) and str(part.get(url_key, "")).startswith("attachment://"):
                name = part[url_key][len("attachment://"):]
                if name in urls:
                    part[url_key] = urls[name]
                    part["proxy_url"] = urls[name]
