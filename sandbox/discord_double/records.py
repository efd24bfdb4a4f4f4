"""What the double writes down about the bot's traffic: requests, broken rules, injected 429s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class RequestRecord:
    """One HTTP request the bot made (path relative to /api/v10 for API calls)."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    duration: float = 0.0
    started_at: float = 0.0
    payload: dict[str, Any] | list[Any] | None = None
    files: list[str] = field(default_factory=list)
    error_code: int | None = None
    rate_limited: bool = False
    #: An injected fault this request got instead of an answer ("http" or "reset").
    fault: str | None = None


@dataclass
class Violation:
    """A Discord rule the bot broke, as the double refused it (or saw it missed)."""

    kind: str
    method: str
    path: str
    status: int
    code: int | None
    details: list[str]
    interaction_id: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.method} {self.path} -> {self.status} ({self.code}): {'; '.join(self.details)}"


@dataclass
class RateLimitRule:
    pattern: str
    remaining: int
    retry_after: float
    is_global: bool
    cloudflare: bool = False


@dataclass
class FaultRule:
    """Answer the next ``remaining`` matching requests with a server error or a reset."""

    pattern: str
    remaining: int
    kind: str  # "http": answer ``status``; "reset": drop the connection without an answer
    status: int = 503
    code: int = 0
    message: str = "upstream connect error or disconnect/reset before headers"


RECORD_KEY = web.RequestKey("record", RequestRecord)
