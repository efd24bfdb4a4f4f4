"""The bot's handle on the engine process: a small async HTTP client, free of torch.

The bot imports this module, so it may only depend on aiohttp and :mod:`engine.protocol`.
Every failure comes back as an :class:`~engine.protocol.EngineError` with a stable code, so
the bot has one kind of exception to turn into advice; a refused connection or a stream cut
short means the engine is not running (or crashed), and says so.

A frozen engine (alive but silent) would otherwise keep an event stream open forever, so the
stream has a read timeout: the engine sends a ``heartbeat`` event after every few seconds of
silence (:data:`engine.server.HEARTBEAT_INTERVAL_S`), and a stream silent for
``event_timeout_s`` ends in ``ENGINE_UNAVAILABLE``. Heartbeats prove only that the engine
answers, not that a job advances; watching a job for stalls is the caller's business.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp

from engine.protocol import (
    TERMINAL_EVENTS,
    DownloadRequest,
    DownloadStatus,
    EngineError,
    ErrorCode,
    FileEntry,
    FileInfo,
    FileKind,
    JobStatus,
    Recipe,
)

DEFAULT_BASE_URL = "http://127.0.0.1:7861"
#: Three of the engine's 5-s heartbeat intervals: one late heartbeat (a busy event loop, a
#: GIL-heavy model load) is tolerated, a silent engine is not.
DEFAULT_EVENT_TIMEOUT_S = 15.0
EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
#: Largest image accepted inline on an event stream (a 4096x4096 RGBA PNG stays below it).
MAX_INLINE_IMAGE_BYTES = 128 * 1024 * 1024
#: Jobs whose inline images are kept until fetched (a follower that died before fetching them
#: would otherwise leave them in memory; past this, the oldest are dropped and fetched again).
MAX_INLINE_JOBS = 32


def _unavailable(where: str, exc: BaseException) -> EngineError:
    return EngineError(
        ErrorCode.ENGINE_UNAVAILABLE,
        f"the engine is not running or not reachable at {where} ({type(exc).__name__}: {exc}); "
        "start it with `python -m engine serve` and check its address",
    )


class EngineClient:
    """Talks to one engine over TCP (``base_url``) or a Unix socket (``unix_socket``).

    ``token`` is the engine's shared secret, sent as ``Authorization: Bearer`` on every
    request; it is kept out of ``repr`` and of every error message.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        unix_socket: str | None = None,
        request_timeout_s: float = 60.0,
        event_timeout_s: float = DEFAULT_EVENT_TIMEOUT_S,
        inline_images: bool = False,
    ) -> None:
        self.unix_socket = unix_socket
        self.base_url = (base_url or ("http://engine" if unix_socket else DEFAULT_BASE_URL)).rstrip(
            "/"
        )
        self._where = f"unix:{unix_socket}" if unix_socket else self.base_url
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        #: Longest silence allowed on an event stream (heartbeats count as sound).
        self.event_timeout_s = event_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        #: Ask for a job's images on its event stream (``?images=inline``, which the cluster's
        #: ingress answers): a request less per job through Serve's proxy. They are kept here
        #: until ``image`` is asked for them; an engine that ignores the option is asked as usual.
        self.inline_images = inline_images
        self._inline: collections.OrderedDict[str, dict[int, bytes]] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<EngineClient {self._where}>"

    # --- session -----------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.unix_socket) if self.unix_socket else None
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- plumbing ----------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; JSON answers decoded, error answers raised as EngineError."""
        try:
            async with self._http().request(
                method, self.base_url + path, timeout=self._timeout, **kwargs
            ) as response:
                body = await response.read()
                if response.status >= 400:
                    raise self._error_from(response.status, body)
                if response.content_type == "application/json":
                    return _decode(body, self._where)
                return body
        except EngineError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # ClientError also covers an answer cut off mid-body (ClientPayloadError): the
            # engine died while answering, which is the same advice as not running at all.
            raise _unavailable(self._where, exc) from exc

    def _error_from(self, status: int, body: bytes) -> EngineError:
        if status == 401:
            return EngineError(
                ErrorCode.UNAUTHORIZED,
                f"the engine at {self._where} refused this client's token ("
                + ("none was configured" if not self._headers else "it does not match")
                + "); give the bot the engine's token in ATELIER_ENGINE_TOKEN (engine_token)",
            )
        try:
            return EngineError.from_json(json.loads(body))
        except (ValueError, AttributeError):
            return EngineError(
                ErrorCode.INTERNAL, f"the engine answered HTTP {status}: {body[:200]!r}"
            )

    # --- API ---------------------------------------------------------------------------

    async def submit(self, job_id: str, recipe: Recipe) -> JobStatus:
        data = await self._request("POST", "/jobs", json={"id": job_id, "recipe": recipe.to_json()})
        return JobStatus.from_json(data)

    async def status(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(await self._request("GET", f"/jobs/{_quote(job_id)}"))

    async def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(await self._request("POST", f"/jobs/{_quote(job_id)}/cancel"))

    async def image(self, job_id: str, index: int) -> bytes:
        held = self._inline.get(job_id)
        if held is not None and index in held:
            data = held.pop(index)
            if not held:
                del self._inline[job_id]
            return data
        data = await self._request("GET", f"/jobs/{_quote(job_id)}/images/{int(index)}")
        if not isinstance(data, bytes):
            raise EngineError(ErrorCode.INTERNAL, "the engine answered an image request with JSON")
        return data

    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every event of the job, past then live; ends after ``done`` or ``failed``.

        Heartbeats are consumed here, never yielded: they only keep the read timeout from
        firing, and a caller that counted them as job activity would miss a stalled job.
        A stream that ends without a terminal event means the engine went away mid-job; one
        silent (not even a heartbeat) for ``event_timeout_s`` means it stopped answering.
        Both raise ``ENGINE_UNAVAILABLE``.
        """
        url = f"{self.base_url}/jobs/{_quote(job_id)}/events" + ("?images=inline" if self.inline_images else "")
        # sock_read restarts with every chunk the engine sends, heartbeats included, so it
        # bounds the engine's silence and not the job's length.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.event_timeout_s)
        try:
            async with self._http().get(url, timeout=timeout) as response:
                if response.status >= 400:
                    raise self._error_from(response.status, await response.read())
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = _decode(line, self._where)
                    if event.get("type") == "heartbeat":
                        continue
                    if event.get("type") == "image" and self.inline_images:
                        await self._read_inline(job_id, event, response.content)
                        continue
                    yield event
                    if event.get("type") in TERMINAL_EVENTS:
                        return
        except EngineError:
            raise
        except aiohttp.SocketTimeoutError as exc:
            raise EngineError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"the engine at {self._where} stopped answering: nothing came on the event "
                f"stream of job '{job_id}' for {self.event_timeout_s:g} s, not even a "
                "heartbeat. Its process may be frozen; check its log, restart it if it stays "
                "silent, and submit the job again",
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError, OSError) as exc:
            raise _unavailable(self._where, exc) from exc
        raise EngineError(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"the engine at {self._where} closed the event stream of job '{job_id}' before it "
            "finished; it may have crashed (check its log) and the job can be submitted again",
        )

    async def _read_inline(self, job_id: str, event: dict[str, Any], stream: aiohttp.StreamReader) -> None:
        """An ``image`` event's bytes, which follow its line on the stream (``bytes`` of them)."""
        size, index = event.get("bytes"), event.get("index")
        if not isinstance(size, int) or not isinstance(index, int) or not 0 <= size <= MAX_INLINE_IMAGE_BYTES:
            raise EngineError(
                ErrorCode.INTERNAL,
                f"the engine at {self._where} sent a malformed inline image for job '{job_id}' ({event!r})",
            )
        data = await stream.readexactly(size)
        self._inline.setdefault(job_id, {})[index] = data
        self._inline.move_to_end(job_id)
        while len(self._inline) > MAX_INLINE_JOBS:
            self._inline.popitem(last=False)

    async def run(
        self, job_id: str, recipe: Recipe, on_event: EventCallback | None = None
    ) -> list[bytes]:
        """Submit, follow the job to its end, and fetch its images; raise if it failed."""
        await self.submit(job_id, recipe)
        async for event in self.events(job_id):
            if on_event is not None:
                outcome = on_event(event)
                if outcome is not None:
                    await outcome
            if event["type"] == "failed":
                raise EngineError.from_json(event)
            if event["type"] == "done":
                return [await self.image(job_id, n) for n in range(int(event["images"]))]
        raise EngineError(ErrorCode.ENGINE_UNAVAILABLE, f"job '{job_id}' ended without a result")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def inspect(self, kind: FileKind, path: str) -> FileInfo:
        return FileInfo.from_json(
            await self._request("POST", "/inspect", json={"kind": kind, "path": path})
        )

    async def list_files(self, kind: FileKind) -> list[FileEntry]:
        data = await self._request("GET", "/files", params={"kind": kind})
        return [FileEntry(path=f["path"], size_bytes=f["size_bytes"]) for f in data["files"]]

    async def start_download(self, request: DownloadRequest) -> DownloadStatus:
        """Have the engine fetch a file into its LoRA folder (see engine.downloads)."""
        return DownloadStatus.from_json(await self._request("POST", "/downloads", json=request.to_json()))

    async def download_status(self, download_id: str) -> DownloadStatus:
        return DownloadStatus.from_json(await self._request("GET", f"/downloads/{_quote(download_id)}"))

    async def cancel_download(self, download_id: str) -> DownloadStatus:
        return DownloadStatus.from_json(await self._request("POST", f"/downloads/{_quote(download_id)}/cancel"))

    async def wait_ready(self, timeout: float = 60.0, *, interval: float = 0.2) -> dict[str, Any]:  # noqa: ASYNC109 (contract name)
        """Poll ``/health`` until the engine answers (it spends a while importing torch)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.health()
            except EngineError as exc:
                if exc.code is not ErrorCode.ENGINE_UNAVAILABLE or time.monotonic() >= deadline:
                    if exc.code is ErrorCode.ENGINE_UNAVAILABLE:
                        raise EngineError(
                            ErrorCode.ENGINE_UNAVAILABLE,
                            f"the engine did not become ready within {timeout:g} s: {exc.message}",
                        ) from exc
                    raise
            await asyncio.sleep(interval)


def _decode(body: bytes, where: str) -> Any:
    """JSON from the engine; anything else is not our engine (or a bug in it), never a crash."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise EngineError(
            ErrorCode.INTERNAL,
            f"the service at {where} answered with something that is not JSON ({body[:80]!r}); "
            "is the engine's address right?",
        ) from exc


def _quote(job_id: str) -> str:
    from urllib.parse import quote

    return quote(job_id, safe="")
