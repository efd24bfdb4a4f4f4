"""A Civitai double on loopback, for tests only: the REST API and the download route, as Civitai
answers them, serving real safetensors files with their real hashes.

Routes (field names and status codes as civitai.com answers them):

- ``GET /api/v1/model-versions/{id}``, ``GET /api/v1/model-versions/by-hash/{hash}`` (SHA256,
  AutoV2, AutoV1 or CRC32, any case), ``GET /api/v1/models/{id}`` (latest version first);
  an unknown id or hash answers 404 ``{"error": "Model not found"}``;
- ``GET /api/download/models/{versionId}[?fileId=]``: 401 JSON for a login-required file
  without the right ``Authorization: Bearer`` (or, with ``login_redirect``, a 307 to
  ``/login?reason=download-auth`` as the site does for browsers), else a 307 to the storage
  route, on this host or on ``storage_host``;
- ``GET /files/{fileId}/{name}``: the bytes with ``Content-Disposition: attachment``, or what a
  :class:`Behaviour` asks for (stall, truncate, oversize, serve other bytes, throttle).

Production code never imports this module (a test checks that).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

JSON = "application/json"


def safetensors_with_metadata(source: Path | bytes, **metadata: str) -> bytes:
    """The same tensors as ``source`` (a real builder-made file) with other header metadata: a
    distinct file (its own sha256) with exactly the real key names, shapes and dtypes."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + length :]


def hashes_of(data: bytes) -> dict[str, str]:
    """Civitai's hash set for a file: SHA256, AutoV2 (its first 10), AutoV1, CRC32 (upper case)."""
    sha = hashlib.sha256(data).hexdigest().upper()
    autov1 = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8].upper()
    return {"AutoV1": autov1, "AutoV2": sha[:10], "SHA256": sha, "CRC32": f"{zlib.crc32(data):08X}"}


@dataclass
class Behaviour:
    """How the storage route misbehaves for one file (all off: it serves the file)."""

    #: Send this many bytes, then nothing (the connection stays open).
    stall_after: int | None = None
    #: Announce the full length, send this many bytes, then drop the connection.
    truncate_after: int | None = None
    #: Bytes added after the real ones (no Content-Length, so only counting catches it).
    extra_bytes: int = 0
    #: Serve these bytes instead of the file's (its announced hash then does not match).
    serve_instead: bytes | None = None
    #: Seconds between 64 KiB chunks (a slow link).
    chunk_delay: float = 0.0
    #: The name in Content-Disposition (default: the file's).
    disposition_name: str | None = None
    #: Send the first chunk, then wait for this to be set before the rest.
    gate: asyncio.Event | None = None


@dataclass
class FakeFile:
    id: int
    name: str
    data: bytes
    type: str = "Model"
    format: str = "SafeTensor"
    primary: bool = True
    #: Announced size; default the real one.
    size_bytes: int | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)

    @property
    def hashes(self) -> dict[str, str]:
        return hashes_of(self.data)


@dataclass
class FakeVersion:
    id: int
    model_id: int
    files: list[FakeFile]
    model_name: str = "Test LoRA"
    name: str = "v1.0"
    model_type: str = "LORA"
    base_model: str = "SD 1.5"
    trained_words: list[str] = field(default_factory=list)
    description: str | None = None
    model_description: str = "<p>A test LoRA.</p>"
    nsfw: bool = False
    nsfw_level: int = 1
    status: str = "Published"
    login_required: bool = False
    images: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def air(self) -> str:
        ecosystem = {"SD 1.5": "sd1", "SDXL 1.0": "sdxl", "Pony": "pony", "Illustrious": "illustrious"}.get(
            self.base_model, "other"
        )
        kind = {"LORA": "lora", "LoCon": "lycoris", "DoRA": "dora", "TextualInversion": "embedding"}.get(
            self.model_type, self.model_type.lower()
        )
        return f"urn:air:{ecosystem}:{kind}:civitai:{self.model_id}@{self.id}"


class CivitaiDouble:
    """``async with CivitaiDouble() as civitai:`` serves on ``civitai.base_url``."""

    def __init__(self, *, token: str = "", storage_host: str = "127.0.0.1", login_redirect: bool = False) -> None:
        self.versions: dict[int, FakeVersion] = {}
        #: The API token the download route accepts for login-required files.
        self.token = token
        #: Where download links redirect to (another name for loopback tests redirect refusals).
        self.storage_host = storage_host
        self.login_redirect = login_redirect
        #: File bodies served (started), by file id.
        self.downloads: Counter[int] = Counter()
        #: (path, Authorization header or "") of every request.
        self.requests: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, version: FakeVersion) -> FakeVersion:
        self.versions[version.id] = version
        return version

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CivitaiDouble:
        app = web.Application()
        app.router.add_get("/api/v1/model-versions/by-hash/{hash}", self._by_hash)
        app.router.add_get("/api/v1/model-versions/{id}", self._version)
        app.router.add_get("/api/v1/models/{id}", self._model)
        app.router.add_get("/api/download/models/{id}", self._download)
        app.router.add_get("/files/{file}/{name}", self._file)
        app.router.add_get("/login", self._login_page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- API -------------------------------------------------------------------------------

    def version_json(self, version: FakeVersion) -> dict[str, Any]:
        return {
            "id": version.id,
            "modelId": version.model_id,
            "name": version.name,
            "description": version.description,
            "baseModel": version.base_model,
            "baseModelType": "Standard",
            "air": version.air,
            "status": version.status,
            "availability": "Public",
            "nsfwLevel": version.nsfw_level,
            "trainedWords": version.trained_words,
            "stats": {"downloadCount": 10, "thumbsUpCount": 3},
            "model": {"name": version.model_name, "type": version.model_type, "nsfw": version.nsfw, "poi": False},
            "files": [
                {
                    "id": f.id,
                    "sizeKB": (f.size_bytes if f.size_bytes is not None else len(f.data)) / 1024,
                    "name": f.name,
                    "type": f.type,
                    "pickleScanResult": "Success",
                    "virusScanResult": "Success",
                    "scannedAt": "2025-01-01T00:00:00.000Z",
                    "hashes": f.hashes,
                    "primary": f.primary,
                    "downloadUrl": f"{self.base_url}/api/download/models/{version.id}?fileId={f.id}",
                    "metadata": {"format": f.format, "size": "full", "fp": "fp16"},
                }
                for f in version.files
            ],
            "images": version.images,
            "downloadUrl": f"{self.base_url}/api/download/models/{version.id}",
        }

    def _note(self, request: web.Request) -> None:
        self.requests.append((request.path_qs, request.headers.get("Authorization", "")))

    @staticmethod
    def _not_found() -> web.Response:
        return web.Response(text=json.dumps({"error": "Model not found"}), status=404, content_type=JSON)

    async def _version(self, request: web.Request) -> web.Response:
        self._note(request)
        version = self.versions.get(int(request.match_info["id"])) if request.match_info["id"].isdigit() else None
        if version is None or version.status == "Deleted":
            return self._not_found()
        return web.json_response(self.version_json(version))

    async def _by_hash(self, request: web.Request) -> web.Response:
        self._note(request)
        wanted = request.match_info["hash"].upper()
        for version in self.versions.values():
            if any(wanted in f.hashes.values() for f in version.files):
                return web.json_response(self.version_json(version))
        return self._not_found()

    async def _model(self, request: web.Request) -> web.Response:
        self._note(request)
        model_id = int(request.match_info["id"]) if request.match_info["id"].isdigit() else -1
        versions = sorted((v for v in self.versions.values() if v.model_id == model_id), key=lambda v: -v.id)
        if not versions:
            return self._not_found()
        first = versions[0]
        return web.json_response({
            "id": model_id, "name": first.model_name, "type": first.model_type, "nsfw": first.nsfw,
            "description": first.model_description, "tags": first.tags,
            "modelVersions": [self.version_json(v) for v in versions],
        })  # fmt: skip

    # --- downloads -------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>Log in to download</html>", content_type="text/html")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        version = self.versions.get(int(request.match_info["id"])) if request.match_info["id"].isdigit() else None
        if version is None:
            return self._not_found()
        file_id = request.query.get("fileId")
        files = [f for f in version.files if file_id is None or str(f.id) == file_id]
        chosen = next((f for f in files if f.primary), files[0] if files else None)
        if chosen is None:
            return self._not_found()
        if version.login_required and request.headers.get("Authorization") != f"Bearer {self.token}":
            if self.login_redirect:
                raise web.HTTPTemporaryRedirect(f"/login?returnUrl=%2Fmodel-versions%2F{version.id}&reason=download-auth")
            message = {"error": "Unauthorized", "message": "The creator of this asset requires you to be logged in to download it"}
            return web.Response(text=json.dumps(message), status=401, content_type=JSON)
        raise web.HTTPTemporaryRedirect(f"http://{self.storage_host}:{self.port}/files/{chosen.id}/{chosen.name}")

    def _find_file(self, file_id: int) -> FakeFile | None:
        for version in self.versions.values():
            for file in version.files:
                if file.id == file_id:
                    return file
        return None

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        file = self._find_file(int(request.match_info["file"])) if request.match_info["file"].isdigit() else None
        if file is None:
            return web.Response(status=404)
        self.downloads[file.id] += 1
        how = file.behaviour
        data = how.serve_instead if how.serve_instead is not None else file.data
        data = data + b"\0" * how.extra_bytes
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{how.disposition_name or file.name}"',
        }
        response = web.StreamResponse(headers=headers)
        if how.extra_bytes == 0:
            response.content_length = len(data)
        await response.prepare(request)
        limit = len(data)
        for cut in (how.stall_after, how.truncate_after):
            if cut is not None:
                limit = min(limit, cut)
        step = 64 * 1024
        for start in range(0, limit, step):
            await response.write(data[start : min(limit, start + step)])
            if how.chunk_delay:
                await asyncio.sleep(how.chunk_delay)
            if how.gate is not None:
                await how.gate.wait()
        if how.stall_after is not None:
            await asyncio.sleep(3600)
        if how.truncate_after is not None:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response
