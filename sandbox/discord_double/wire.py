"""HTTP plumbing shared by the double's REST handlers: Discord-shaped replies and uploads.

Discord answers with ``Content-Type: application/json`` exactly; discord.py compares the header
with ``==`` and treats anything else (aiohttp's ``json_response`` adds ``; charset=utf-8``) as
plain text, which breaks login. Every JSON reply here goes through :func:`json_reply`.
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sandbox.discord_double.limits import REQUEST_SIZE_MAX, REQUEST_TOO_LARGE


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def no_content() -> web.Response:
    return web.Response(status=204)


class DiscordHTTPError(Exception):
    """Raised inside a handler to answer with a Discord error body (and maybe a violation)."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        violation: str | None = None,
        details: list[str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body if body is not None else {"message": message, "code": code}
        self.violation = violation
        self.details = details or [message]

    def to_response(self) -> web.Response:
        return json_reply(self.body, self.status)


def _too_large(size: int, limit: int) -> DiscordHTTPError:
    return DiscordHTTPError(
        413, REQUEST_TOO_LARGE, "Request entity too large",
        violation="request_too_large",
        details=[f"request body of {size} bytes exceeds {limit}"],
    )


@dataclass
class UploadedFile:
    index: int
    filename: str
    data: bytes
    content_type: str


async def read_body(
    request: web.Request, size_limit: int = REQUEST_SIZE_MAX
) -> tuple[dict[str, Any], list[UploadedFile]]:
    """The JSON payload and the files of a request, whether plain JSON or multipart.

    discord.py sends files as ``multipart/form-data`` with a ``payload_json`` part and one
    ``files[n]`` part per file (field names unquoted: Discord rejects ``files%5B0%5D``).
    """
    if request.content_length is not None and request.content_length > size_limit:
        raise _too_large(request.content_length, size_limit)
    if request.content_type == "multipart/form-data":
        payload: dict[str, Any] = {}
        files: list[UploadedFile] = []
        reader = await request.multipart()
        received = 0
        async for part in reader:
            name = part.name or ""  # type: ignore[union-attr]
            raw = await part.read()  # type: ignore[union-attr]
            received += len(raw)
            if received > size_limit:  # a chunked upload announces no length up front
                raise _too_large(received, size_limit)
            if name == "payload_json":
                payload = json.loads(raw)
            elif name.startswith("files[") and name.endswith("]"):
                filename = part.filename or f"file{len(files)}"  # type: ignore[union-attr]
                guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                files.append(UploadedFile(int(name[6:-1]), filename, bytes(raw), guessed))
            elif name.startswith("file"):
                raise DiscordHTTPError(
                    400, 50035, "Invalid Form Body",
                    violation="bad_multipart",
                    details=[f"unexpected multipart field {name!r}: Discord wants files[n]"],
                )
        return payload, files
    raw_body = await request.read()
    if not raw_body:
        return {}, []
    if request.content_type != "application/json":
        raise DiscordHTTPError(
            400, 50109, "The request body contains invalid JSON.",
            violation="bad_content_type",
            details=[f"body sent as {request.content_type!r}, Discord expects application/json"],
        )
    try:
        return json.loads(raw_body), []
    except json.JSONDecodeError as exc:
        raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from exc
