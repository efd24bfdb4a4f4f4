"""The gateway side of the double: one websocket session per connected client.

Speaks the subset of the gateway protocol discord.py's ``DiscordWebSocket`` needs: HELLO,
heartbeats, IDENTIFY -> READY + GUILD_CREATE, RESUME -> RESUMED, member chunk requests, and
dispatches. Frames are plain JSON text: discord.py asks for ``compress=zlib-stream`` in the URL
but decodes text frames as JSON directly, so no compression is needed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from sandbox.discord_double.double import DiscordDouble

HEARTBEAT_INTERVAL_MS = 41250
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_NOT_AUTHENTICATED = 4003

GUILDS_INTENT = 1 << 0
GUILD_MESSAGES_INTENT = 1 << 9
DIRECT_MESSAGES_INTENT = 1 << 12


class GatewaySession:
    """One client's connection: its sequence counter, intents and identify state."""

    def __init__(self, double: DiscordDouble, socket: web.WebSocketResponse) -> None:
        self.double = double
        self.socket = socket
        self.sequence = 0
        self.session_id = secrets.token_hex(16)
        self.intents = 0
        self.identified = asyncio.Event()
        self.heartbeats = 0
        self.received_ops: list[int] = []
        self._send_lock = asyncio.Lock()

    async def send(self, op: int, data: Any, event: str | None = None) -> None:
        frame: dict[str, Any] = {"op": op, "d": data, "s": None, "t": event}
        if op == 0:
            self.sequence += 1
            frame["s"] = self.sequence
        async with self._send_lock:
            if not self.socket.closed:
                await self.socket.send_str(json.dumps(frame))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        await self.send(0, data, event)

    def wants(self, intent: int) -> bool:
        return bool(self.intents & intent)

    async def run(self) -> None:
        await self.send(10, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["atelier-double"]})
        async for message in self.socket:
            if message.type != WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            op = frame.get("op")
            self.received_ops.append(op)
            data = frame.get("d")
            if op == 1:
                self.heartbeats += 1
                await self.send(11, None)
            elif op == 2:
                await self._identify(data)
            elif op == 6:
                await self._resume(data)
            elif op == 8:
                await self._request_members(data)
            elif op != 3 and not self.identified.is_set():
                await self.socket.close(code=CLOSE_NOT_AUTHENTICATED, message=b"Not authenticated.")

    async def _identify(self, data: dict[str, Any]) -> None:
        if data.get("token") != self.double.token:
            await self.socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        self.intents = int(data.get("intents") or 0)
        double = self.double
        await self.dispatch("READY", {
            "v": 10,
            "user": {**double.bot_user.to_payload(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in double.guilds],
            "session_id": self.session_id,
            "resume_gateway_url": double.gateway_url,
            "application": {"id": str(double.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "session_type": "normal",
            "auth_session_id_hash": "",
            "_trace": ["atelier-double"],
        })
        for guild in double.guilds:
            await self.dispatch("GUILD_CREATE", guild.to_payload())
        self.identified.set()
        double._on_session_identified(self)

    async def _resume(self, data: dict[str, Any]) -> None:
        if data.get("token") != self.double.token:
            await self.socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        self.session_id = data.get("session_id") or self.session_id
        self.sequence = int(data.get("seq") or 0)
        self.intents = self.double._last_intents
        await self.dispatch("RESUMED", {"_trace": ["atelier-double"]})
        self.identified.set()
        self.double._on_session_identified(self)

    async def _request_members(self, data: dict[str, Any]) -> None:
        guild = self.double.guild_by_id(int(data["guild_id"]))
        members = [] if guild is None else [m.to_payload() for m in guild.members.values()]
        query = data.get("query") or ""
        members = [m for m in members if m["user"]["username"].startswith(query)]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(data["guild_id"]),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk)
