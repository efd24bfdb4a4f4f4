"""A local Discord for tests and the offline demo: a real discord.py bot talks to it over HTTP
and a websocket, exactly as it would talk to Discord, and every rule Discord enforces is enforced.

Torch-free; needs only aiohttp and discord.py. See :mod:`sandbox.discord_double.double`.
"""

from sandbox.discord_double.double import DiscordDouble, RequestRecord, Violation
from sandbox.discord_double.harness import patch_discord_endpoints, run_bot
from sandbox.discord_double.state import (
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Button,
    Channel,
    Guild,
    InteractionHandle,
    Member,
    Role,
    StoredAttachment,
    StoredMessage,
    User,
)
from sandbox.discord_double.transcript import Transcript, write_transcript

__all__ = [
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "Button",
    "Channel",
    "DiscordDouble",
    "Guild",
    "InteractionHandle",
    "Member",
    "RequestRecord",
    "Role",
    "StoredAttachment",
    "StoredMessage",
    "Transcript",
    "User",
    "Violation",
    "patch_discord_endpoints",
    "run_bot",
    "write_transcript",
]
