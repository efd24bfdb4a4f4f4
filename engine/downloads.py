"""Downloads into the LoRA folder: a file the bot has vetted is fetched, verified, moved into place.

Why the engine downloads, not the bot: the engine owns the LoRA folder and may run on another
machine than the bot, which then cannot see that folder at all. So the bot looks a resource up
on Civitai and decides whether the server may have it (``bot.sources.plan``); the engine, asked
over its authenticated API (``POST /downloads``), fetches the bytes. What the engine enforces on
its own, whoever asks:

- downloads happen only when the operator started it with ``--allow-downloads``, and only
  from the hosts it was given (``--download-hosts``; redirects are followed by hand and each
  hop is checked, so a download link cannot bounce the engine to another host);
- the caller's Civitai token goes to the first URL's host only, never to the storage host a
  download redirects to, and is never logged;
- the destination is a ``.safetensors`` name inside the LoRA folder (``engine.paths``);
- bytes go to a hidden temporary folder next to the destination while they are hashed; a
  stall, a timeout, a truncated or oversized body, a wrong sha256, an archive or a pickle, or a
  file of the wrong kind (a checkpoint offered as a LoRA) deletes them, so nothing half-written
  is ever left where the engine or a listing would see it; a verified file is renamed into
  place in one step (same filesystem);
- the same destination is downloaded once however many ask, and a destination that already
  holds the very file (same sha256) is answered at once.

Downloads run on the event loop (disk writes and hashing in worker threads), never on the
generation worker, so a slow download never holds up an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from engine.inspect import file_hashes, inspect_file, read_header
from engine.paths import PICKLE_SUFFIXES, resolve_new_file
from engine.protocol import (
    DownloadRequest,
    DownloadState,
    DownloadStatus,
    EngineError,
    ErrorCode,
    FileInfo,
)

log = logging.getLogger("engine.downloads")

#: Civitai's site, its NSFW twin, and the storage its download links redirect to.
DEFAULT_DOWNLOAD_HOSTS = (
    "civitai.com", "*.civitai.com", "civitai.red", "*.civitai.red",
    "*.r2.cloudflarestorage.com", "*.backblazeb2.com",
)  # fmt: skip
MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 20
#: Civitai announces sizes in (fractional) kilobytes; a body may differ from it by rounding.
SIZE_SLACK_BYTES = 4096
TEMP_PREFIX = ".atelier-download-"
_KEEP_FINISHED = 256
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x1f\x8b")
_PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))
_ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz")
_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.IGNORECASE)


class DownloadFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class HostRule:
    """``civitai.com`` (that host), ``*.civitai.com`` (its subdomains), over https; an entry
    written ``http://host`` also allows plain http to that host (a local mirror, a test)."""

    pattern: str
    schemes: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> HostRule:
        text = text.strip().lower()
        schemes = frozenset({"https"})
        if text.startswith("http://"):
            schemes, text = frozenset({"http", "https"}), text.removeprefix("http://")
        host = text.removeprefix("https://").split("/")[0]
        if not host.startswith("[") and ":" in host:
            host = host.rsplit(":", 1)[0]  # a port: every port of the host is allowed
        return cls(host, schemes)

    def allows(self, scheme: str, host: str) -> bool:
        return scheme in self.schemes and fnmatch.fnmatchcase(host, self.pattern)


def parse_hosts(entries: Iterable[str]) -> tuple[HostRule, ...]:
    return tuple(HostRule.parse(e) for e in entries if e.strip())


@dataclass
class _Download:
    request: DownloadRequest
    final: Path
    state: DownloadState = "queued"
    received: int = 0
    total: int = 0
    error: dict[str, str] | None = None
    info: FileInfo | None = None
    reused: bool = False
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def status(self) -> DownloadStatus:
        return DownloadStatus(
            id=self.request.id,
            state=self.state,
            path=self.request.path,
            received=self.received,
            total=self.total,
            error=self.error,
            file=self.info,
            reused=self.reused,
        )


class DownloadManager:
    """The engine's downloads: at most ``max_parallel`` at once, each confined to ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        enabled: bool = False,
        allowed_hosts: Iterable[str] = DEFAULT_DOWNLOAD_HOSTS,
        max_parallel: int = 2,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.rules = parse_hosts(allowed_hosts)
        self._slots = asyncio.Semaphore(max_parallel)
        self._chunk = chunk_bytes
        self._downloads: OrderedDict[str, _Download] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Remove what a killed engine may have left half-written (hidden temporary folders)."""
        if self.root.is_dir():
            await asyncio.to_thread(remove_stale_temporaries, self.root)

    async def stop(self) -> None:
        tasks = [d.task for d in self._downloads.values() if d.task is not None and not d.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookies (a redirect must not carry one host's cookie to another), no automatic
            # redirects (each hop is checked against the allowed hosts).
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": "Atelier engine"}
            )
        return self._session

    # --- API -------------------------------------------------------------------------------

    def host_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return bool(host) and any(rule.allows(parts.scheme.lower(), host) for rule in self.rules)

    def submit(self, request: DownloadRequest) -> DownloadStatus:
        """Start (or join) a download; refusals raise EngineError before anything is fetched."""
        if not self.enabled:
            raise EngineError(
                ErrorCode.DOWNLOAD_REFUSED,
                "this engine was started without --allow-downloads (ATELIER_ENGINE_ALLOW_DOWNLOADS), "
                "so it fetches nothing; the operator can turn downloads on, or copy the file in by hand",
            )
        existing = self._downloads.get(request.id)
        if existing is not None:
            return existing.status()
        if not _ID.match(request.id):
            raise EngineError(ErrorCode.INVALID_RECIPE, "a download needs an id of letters, digits and ._:-")
        sha256 = request.sha256.lower()
        if not _SHA256.match(sha256):
            raise EngineError(ErrorCode.INVALID_RECIPE, "a download needs the file's sha256 (64 hex digits)")
        if request.kind not in ("lora", "embedding"):
            raise EngineError(ErrorCode.INVALID_RECIPE, "a download's kind must be 'lora' or 'embedding'")
        if not self.host_allowed(request.url):
            raise EngineError(
                ErrorCode.DOWNLOAD_REFUSED,
                f"this engine does not download from {urlsplit(request.url).hostname or 'that address'}; "
                "its allowed hosts are set with --download-hosts",
            )
        final = resolve_new_file(self.root, request.path)
        for other in self._downloads.values():
            if other.final == final and other.state not in ("done", "failed"):
                if other.request.sha256.lower() == sha256:
                    return other.status()  # the same file to the same place: one download
                raise EngineError(
                    ErrorCode.DOWNLOAD_REFUSED, f"another download is writing '{request.path}' right now"
                )
        download = _Download(replace(request, sha256=sha256), final)
        self._downloads[request.id] = download
        self._forget_old()
        download.task = asyncio.get_running_loop().create_task(self._run(download), name=f"download-{request.id}")
        return download.status()

    def status(self, download_id: str) -> DownloadStatus:
        download = self._downloads.get(download_id)
        if download is None:
            raise EngineError(ErrorCode.UNKNOWN_JOB, f"no download with id '{download_id[:128]}'")
        return download.status()

    async def wait(self, download_id: str) -> DownloadStatus:
        download = self._downloads.get(download_id)
        if download is None:
            raise EngineError(ErrorCode.UNKNOWN_JOB, f"no download with id '{download_id[:128]}'")
        await download.done.wait()
        return download.status()

    def cancel(self, download_id: str) -> DownloadStatus:
        download = self._downloads.get(download_id)
        if download is None:
            raise EngineError(ErrorCode.UNKNOWN_JOB, f"no download with id '{download_id[:128]}'")
        if download.task is not None and not download.task.done():
            download.task.cancel()
        return download.status()

    def _forget_old(self) -> None:
        finished = [k for k, d in self._downloads.items() if d.finished_at is not None]
        for key in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._downloads[key]

    # --- the download itself ---------------------------------------------------------------

    async def _run(self, download: _Download) -> None:
        request = download.request
        temp_dir = download.final.parent / f"{TEMP_PREFIX}{_safe(request.id)}"
        try:
            if download.final.exists():
                await self._reuse(download)
                return
            async with self._slots:
                download.state = "running"
                async with asyncio.timeout(request.timeout_s or None):
                    await self._fetch(download, temp_dir)
                download.state = "verifying"
                info = await asyncio.to_thread(self._verify, download, temp_dir)
                await asyncio.to_thread(_move_into_place, temp_dir / download.final.name, download.final)
                download.info = replace(info, path=request.path)
                download.state = "done"
                log.info("downloaded %s (%d bytes)", request.path, download.received)
        except DownloadFailed as exc:
            self._fail(download, exc.reason, exc.message)
        except aiohttp.ServerTimeoutError:
            self._fail(
                download, "stalled",
                f"the download stalled: nothing arrived for {request.stall_s:g} s; try again later",
            )  # fmt: skip
        except TimeoutError:
            self._fail(
                download, "timeout",
                f"the download took longer than the {request.timeout_s:g} s allowed "
                "(civitai_download_timeout); try again later or ask the operator to allow more",
            )  # fmt: skip
        except aiohttp.ClientPayloadError:
            self._fail(download, "truncated", "the connection closed before the whole file arrived (truncated); try again")
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(download, "unavailable", f"the download failed ({type(exc).__name__}); try again later")
        except asyncio.CancelledError:
            self._fail(download, "cancelled", "the download was cancelled")
            raise
        except EngineError as exc:
            self._fail(download, "corrupt", exc.message)
        except Exception as exc:  # a bug must still end the download and free its slot
            log.exception("download %s failed", request.id)
            self._fail(download, "unavailable", f"the engine failed on this download ({exc!r})")
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(shutil.rmtree, temp_dir, True)
            download.finished_at = time.monotonic()
            download.done.set()

    def _fail(self, download: _Download, reason: str, message: str) -> None:
        download.state = "failed"
        download.error = {"code": ErrorCode.DOWNLOAD_FAILED.value, "reason": reason, "message": message}
        log.info("download %s failed: %s", download.request.path, reason)

    async def _reuse(self, download: _Download) -> None:
        """The destination exists: answer at once if it is this very file, else refuse."""
        download.state = "verifying"

        def check() -> FileInfo:
            _, header_len = read_header(download.final)
            sha256, _ = file_hashes(download.final, header_len)
            if sha256 != download.request.sha256:
                raise DownloadFailed(
                    "exists_different",
                    f"a different file already exists at '{download.request.path}'; the operator should "
                    "remove or rename it",
                )
            return inspect_file(download.final, relative_to=self.root.resolve())

        info = await asyncio.to_thread(check)
        _check_kind(info, download.request.kind)
        download.info, download.reused, download.state = replace(info, path=download.request.path), True, "done"
        download.received = download.total = info.size_bytes

    async def _open(self, request: DownloadRequest) -> aiohttp.ClientResponse:
        """The final response after checked redirects (raises DownloadFailed with the reason)."""
        url = request.url
        first_host = (urlsplit(url).hostname or "").lower()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=request.stall_s or None)
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if not self.host_allowed(url):
                raise DownloadFailed(
                    "redirect_refused",
                    f"the download was redirected to {parts.hostname or 'an address'}, a host this engine "
                    "does not download from (--download-hosts); it was not followed",
                )
            if parts.path.rstrip("/").endswith("/login") or "reason=download-auth" in parts.query:
                raise self._login_failure(request)
            headers = {}
            if request.auth_token and (parts.hostname or "").lower() == first_host:
                headers["Authorization"] = f"Bearer {request.auth_token}"
            response = await self._http().get(url, headers=headers, allow_redirects=False, timeout=timeout)
            if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                response.release()
                continue
            return response
        raise DownloadFailed("too_many_redirects", f"the download was redirected more than {MAX_REDIRECTS} times")

    def _login_failure(self, request: DownloadRequest) -> DownloadFailed:
        if request.auth_token:
            return DownloadFailed(
                "token_refused",
                "the source refused the operator's API token for this file (expired, or no access to it); "
                "the operator should check ATELIER_CIVITAI_TOKEN",
            )
        return DownloadFailed(
            "login_required",
            "this file can only be downloaded with a login: the bot's operator can set a Civitai API token "
            "(ATELIER_CIVITAI_TOKEN, from civitai.com/user/account)",
        )

    async def _fetch(self, download: _Download, temp_dir: Path) -> None:
        request = download.request
        response = await self._open(request)
        try:
            if response.status in (401, 403):
                raise self._login_failure(request)
            if response.status in (404, 410):
                raise DownloadFailed("not_found", "the source has no such file (404): it may be unpublished or removed")
            if response.status >= 400:
                raise DownloadFailed("unavailable", f"the source answered HTTP {response.status}; try again later")
            if response.content_type in ("text/html", "application/json"):
                raise DownloadFailed(
                    "not_a_file", f"the source answered a {response.content_type} page instead of the file"
                )
            _check_file_name(response.headers.get("Content-Disposition", ""))
            announced = request.size_bytes
            limit = min(request.max_bytes, announced + SIZE_SLACK_BYTES) if announced else request.max_bytes
            length = response.content_length
            if length is not None and length > limit:
                raise _too_large(length, announced, request.max_bytes)
            download.total = length or announced
            await asyncio.to_thread(temp_dir.mkdir, parents=True, exist_ok=True)
            temp = temp_dir / download.final.name
            digest = hashlib.sha256()
            handle = await asyncio.to_thread(open, temp, "xb")
            try:
                first = True
                async for chunk in response.content.iter_chunked(self._chunk):
                    if first:
                        _check_magic(chunk)
                        first = False
                    download.received += len(chunk)
                    if download.received > limit:
                        raise _too_large(download.received, announced, request.max_bytes)
                    await asyncio.to_thread(_write, handle, digest, chunk)
                await asyncio.to_thread(_sync_close, handle)
            finally:
                if not handle.closed:
                    await asyncio.to_thread(handle.close)
            expected = length or announced
            if expected and download.received < expected - (0 if length else SIZE_SLACK_BYTES):
                raise DownloadFailed(
                    "truncated",
                    f"only {download.received:,} of {expected:,} bytes arrived (truncated); try again",
                )
            if digest.hexdigest() != request.sha256:
                raise DownloadFailed(
                    "hash_mismatch",
                    "the file that arrived does not have the sha256 the source announced, so it was "
                    "deleted (a damaged download or a changed file); try again later",
                )
        finally:
            response.release()

    def _verify(self, download: _Download, temp_dir: Path) -> FileInfo:
        """Read the verified bytes as safetensors and check they are what was asked for."""
        temp = temp_dir / download.final.name
        try:
            info = inspect_file(temp, relative_to=temp_dir)
        except EngineError as exc:
            reason = "pickle" if exc.code is ErrorCode.NOT_SAFETENSORS else "corrupt"
            raise DownloadFailed(reason, exc.message) from exc
        _check_kind(info, download.request.kind)
        return info


def _check_kind(info: FileInfo, kind: str) -> None:
    if info.kind == kind:
        return
    what = {
        "checkpoint": "a full model (a checkpoint)", "embedding": "a textual-inversion embedding",
        "lora": "a LoRA", "vae": "a VAE", "text_encoder": "a text encoder",
    }.get(info.kind, "not a file Atelier recognises")  # fmt: skip
    raise DownloadFailed(
        "wrong_kind", f"the file is {what}, not {'a LoRA' if kind == 'lora' else 'an embedding'} as announced; it was deleted"
    )


def _check_file_name(disposition: str) -> None:
    match = _FILENAME.search(disposition or "")
    if not match:
        return
    name = match[1].strip().lower()
    if name.endswith(_ARCHIVE_SUFFIXES):
        raise DownloadFailed("archive", f"the source sends an archive (`{match[1][:80]}`); Atelier never unpacks archives")
    if any(name.endswith(s) for s in PICKLE_SUFFIXES):
        raise DownloadFailed("pickle", f"the source sends a pickle (`{match[1][:80]}`), which can run code when loaded")


def _check_magic(chunk: bytes) -> None:
    if chunk.startswith(_ARCHIVE_MAGIC):
        raise DownloadFailed("archive", "the file is an archive (zip, 7z, rar or gzip), not safetensors; Atelier never unpacks archives")
    if chunk[:2] in _PICKLE_MAGIC:
        raise DownloadFailed("pickle", "the file is a Python pickle, which can run code when loaded; it was not kept")


def _too_large(size: int, announced: int, cap: int) -> DownloadFailed:
    if announced and size > announced + SIZE_SLACK_BYTES and announced + SIZE_SLACK_BYTES <= cap:
        return DownloadFailed(
            "too_large", f"the source sends more than the {announced:,} bytes it announced; the download was stopped"
        )
    return DownloadFailed("too_large", f"the file is larger than the {cap:,} bytes allowed per file; the download was stopped")


def _write(handle: IO[bytes], digest: Any, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


def _sync_close(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _move_into_place(temp: Path, final: Path) -> None:
    """Rename the verified file into place (atomic on one filesystem) and sync the folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise DownloadFailed("exists_different", f"'{final.name}' appeared while downloading; it was left as it is")
    os.replace(temp, final)
    with contextlib.suppress(OSError):
        folder = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]


def remove_stale_temporaries(root: Path) -> int:
    """Delete the hidden temporary folders of downloads a killed engine never finished."""
    removed = 0
    for dirpath, dirnames, _files in os.walk(root, followlinks=False):
        for name in list(dirnames):
            if name.startswith(TEMP_PREFIX):
                shutil.rmtree(Path(dirpath, name), ignore_errors=True)
                dirnames.remove(name)
                removed += 1
    return removed
