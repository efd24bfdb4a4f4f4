"""Discord's rate limits, enforced by the double as Discord documents them.

What Discord documents (developer docs, "Rate Limits") and this module does:

- Every route has a bucket, shared by the requests with the same *major parameter*
  (``channel_id``, ``guild_id``, or a webhook's ``id`` + ``token``); each answer carries
  ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``, ``-Reset-After`` and ``-Bucket`` so a
  client can wait before it is refused. discord.py reads exactly these headers.
- A request over a bucket's limit gets ``429`` with a JSON body ``{"message", "retry_after",
  "global"}``, ``Retry-After`` and ``X-RateLimit-Scope``, and the ``Via`` header Discord's
  edge adds (discord.py treats a 429 without it as a Cloudflare ban).
- A global limit of 50 requests per second per bot token; interaction callbacks and the
  interaction-token webhooks (followups, ``@original`` edits) are exempt from it and have
  buckets of their own, keyed by the token, separate from the channel's.
- 10,000 invalid requests (401, 403, 429) in 10 minutes get an IP banned by Cloudflare; the
  double records a violation instead.

Discord tells clients not to hard-code the numbers, and publishes none per route; the ones
here are the ones Discord has historically used and that bots meet in practice (the message
bucket of 5 per 5 s per channel). A window opens with the first request into an empty
bucket and resets ``window`` seconds later, which is how Discord's counters behave.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

GLOBAL_LIMIT = 50
GLOBAL_WINDOW_S = 1.0
INVALID_LIMIT = 10_000
INVALID_WINDOW_S = 600.0


@dataclass(frozen=True)
class BucketRule:
    """One route family: its bucket hash, how many requests per window, and the major part."""

    bucket: str
    limit: int
    window: float
    #: Names of the path parts (from the pattern's groups) that make the major parameter.
    major: tuple[str, ...] = ()
    #: Interaction endpoints do not count toward the global limit.
    exempt_global: bool = False


_ID = r"[0-9]+"
_TOKEN = r"[^/]+"
#: (method, path pattern relative to /api/v10, rule). The first match wins.
ROUTES: tuple[tuple[str, re.Pattern[str], BucketRule | None], ...] = (
    # Interaction callbacks: one answer per interaction, no bucket, not global.
    ("POST", re.compile(rf"/interactions/(?P<id>{_ID})/(?P<token>{_TOKEN})/callback"), None),
    # Interaction-token webhooks: followups and edits of the response, keyed by the token.
    ("*", re.compile(rf"/webhooks/(?P<app>{_ID})/(?P<token>{_TOKEN})(/.*)?"),
     BucketRule("webhook-token", 5, 2.0, ("app", "token"), exempt_global=True)),
    ("POST", re.compile(rf"/channels/(?P<channel>{_ID})/messages"),
     BucketRule("channel-message-create", 5, 5.0, ("channel",))),
    ("PATCH", re.compile(rf"/channels/(?P<channel>{_ID})/messages/{_ID}"),
     BucketRule("channel-message-edit", 5, 5.0, ("channel",))),
    ("DELETE", re.compile(rf"/channels/(?P<channel>{_ID})/messages/{_ID}"),
     BucketRule("channel-message-delete", 5, 1.0, ("channel",))),
    ("GET", re.compile(rf"/channels/(?P<channel>{_ID})/messages"),
     BucketRule("channel-message-history", 5, 1.0, ("channel",))),
    ("*", re.compile(rf"/channels/(?P<channel>{_ID})(/.*)?"),
     BucketRule("channel", 10, 1.0, ("channel",))),
    ("*", re.compile(rf"/applications/{_ID}/guilds/(?P<guild>{_ID})/commands"),
     BucketRule("guild-commands", 5, 20.0, ("guild",))),
    ("*", re.compile(rf"/guilds/(?P<guild>{_ID})(/.*)?"),
     BucketRule("guild", 10, 1.0, ("guild",))),
)
#: Any other route: its own bucket per method and path shape.
DEFAULT_RULE = BucketRule("route", 10, 1.0)


@dataclass
class _Window:
    remaining: int
    resets_at: float


@dataclass
class Decision:
    """What to answer: headers to add to the response, or a 429 to send instead."""

    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    is_global: bool = False
    scope: str = "user"


class RateLimiter:
    """Counts requests per bucket and globally; ``check`` is called once per API request."""

    def __init__(
        self,
        *,
        global_limit: int = GLOBAL_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.global_limit = global_limit
        self.clock = clock
        self.enabled = enabled
        self._windows: dict[tuple[str, str], _Window] = {}
        self._global = _Window(global_limit, 0.0)
        self._invalid: deque[float] = deque()
        #: Requests refused with 429 by bucket hash ("global" for the global limit).
        self.refused: dict[str, int] = {}

    @staticmethod
    def rule_for(method: str, path: str) -> tuple[BucketRule | None, str]:
        """The route's rule and its major-parameter key (``None`` rule: not limited)."""
        for route_method, pattern, rule in ROUTES:
            if route_method not in ("*", method):
                continue
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if rule is None:
                return None, ""
            return rule, "+".join(match[name] for name in rule.major)
        shape = re.sub(r"/[0-9]+", "/{id}", path)
        return BucketRule(f"{DEFAULT_RULE.bucket}:{method} {shape}", DEFAULT_RULE.limit, DEFAULT_RULE.window), ""

    def check(self, method: str, path: str, *, authenticated: bool) -> Decision:
        """Count one request; the decision says whether it passes and with which headers."""
        if not self.enabled:
            return Decision()
        rule, major = self.rule_for(method, path)
        if rule is None:
            return Decision()
        now = self.clock()
        if authenticated and not rule.exempt_global:
            if self._global.resets_at <= now:
                self._global = _Window(self.global_limit, now + GLOBAL_WINDOW_S)
            if self._global.remaining <= 0:
                return self._refuse("global", self._global.resets_at - now, is_global=True)
        key = (rule.bucket, major)
        window = self._windows.get(key)
        if window is None or window.resets_at <= now:
            window = self._windows[key] = _Window(rule.limit, now + rule.window)
        reset_after = max(0.0, window.resets_at - now)
        if window.remaining <= 0:
            decision = self._refuse(rule.bucket, reset_after)
            decision.headers.update(self._headers(rule, 0, reset_after))
            return decision
        window.remaining -= 1
        if authenticated and not rule.exempt_global:
            self._global.remaining -= 1
        return Decision(headers=self._headers(rule, window.remaining, reset_after))

    def _refuse(self, bucket: str, retry_after: float, *, is_global: bool = False) -> Decision:
        self.refused[bucket] = self.refused.get(bucket, 0) + 1
        retry_after = max(0.001, retry_after)
        headers = {
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Scope": "global" if is_global else "user",
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return Decision(headers=headers, retry_after=retry_after, is_global=is_global,
                        scope="global" if is_global else "user")

    @staticmethod
    def _headers(rule: BucketRule, remaining: int, reset_after: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(rule.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": rule.bucket,
            "Via": "1.1 google",
        }

    def count_invalid(self, status: int) -> bool:
        """Record a 401/403/429 answer; True once the 10-minute count reaches Cloudflare's ban."""
        if status not in (401, 403, 429):
            return False
        now = self.clock()
        self._invalid.append(now)
        while self._invalid and self._invalid[0] < now - INVALID_WINDOW_S:
            self._invalid.popleft()
        return len(self._invalid) == INVALID_LIMIT
