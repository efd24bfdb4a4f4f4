"""The engine's shared secret: every request but a bare liveness check carries it.

Anyone who reaches the engine's port could otherwise spend its GPU and read which files it
holds, and the README offers running the engine on another machine. So the engine answers
only callers that send ``Authorization: Bearer <token>``, the token the operator configured
(``ATELIER_ENGINE_TOKEN``) or the bot generated when it started the engine itself.

``GET /health`` sent without any token still answers ``{"status": "ok"}`` and nothing else, so
supervisors and container health checks can tell the process is up without holding the
secret; the full report (folders, loaded files, memory) needs the token like every route.

Tokens are compared in constant time (:func:`hmac.compare_digest`) and never logged: the
request log is off and refusals name neither the expected nor the offered value.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from aiohttp import web

from engine.protocol import EngineError, ErrorCode

#: Shorter tokens are refused at start-up: the secret is the only thing between the port
#: and the GPU, so it must not be guessable (``secrets.token_urlsafe(32)`` gives 43 chars).
MIN_TOKEN_LENGTH = 16
#: The one route that answers without the token, with nothing but that the engine is up.
LIVENESS_PATH = "/health"
TOKEN_KEY = web.AppKey("token", str)


def new_token() -> str:
    """A fresh random token (256 bits), URL-safe so it fits in a header and a file as is."""
    return secrets.token_urlsafe(32)


def check_token(token: str, *, source: str) -> str:
    """``token`` stripped of surrounding whitespace, or ValueError saying what to fix."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the engine token from {source} is {len(token)} characters long; use at least "
            f"{MIN_TOKEN_LENGTH} random characters, e.g. the output of "
            "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError(f"the engine token from {source} contains spaces or control characters")
    return token


def offered_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_authorized(request: web.Request) -> bool:
    expected = request.app.get(TOKEN_KEY)
    if expected is None:  # an app built without a token (in-process tests only)
        return True
    offered = offered_token(request)
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def unauthorized() -> web.Response:
    error = EngineError(
        ErrorCode.UNAUTHORIZED,
        "this engine needs its token: send 'Authorization: Bearer <token>' with the value of "
        "ATELIER_ENGINE_TOKEN the engine was started with",
    )
    return web.json_response(
        error.to_json(), status=401, headers={"WWW-Authenticate": 'Bearer realm="atelier-engine"'}
    )


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    if is_authorized(request):
        return await handler(request)
    # Only a caller that sends no token gets the bare answer: a wrong token is refused, so
    # a client with a stale or mistyped one finds out from its first health check.
    if request.method == "GET" and request.path == LIVENESS_PATH and offered_token(request) is None:
        return web.json_response({"status": "ok"})
    return unauthorized()
