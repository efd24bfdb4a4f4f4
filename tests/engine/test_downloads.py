"""The engine's downloads against the Civitai double: real builder-made files, real hashes, every
bad input refused with nothing left in the LoRA folder, one download for the same file."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from engine.client import EngineClient
from engine.downloads import TEMP_PREFIX, DownloadManager, HostRule
from engine.jobs import JobManager
from engine.protocol import DownloadRequest, DownloadStatus, EngineError, ErrorCode
from engine.server import create_app
from tests.civitai_double import (
    Behaviour,
    CivitaiDouble,
    FakeFile,
    FakeVersion,
    safetensors_with_metadata,
)

TOKEN = "civitai-api-key-for-tests"
LOOPBACK = ("http://127.0.0.1",)


@pytest.fixture
def lora_bytes(demo_assets: Any) -> bytes:
    return safetensors_with_metadata(demo_assets.lora_root / "sd15" / "pixel-art.safetensors", ss_output_name="fetched-pixels")


@pytest.fixture
async def civitai() -> AsyncIterator[CivitaiDouble]:
    async with CivitaiDouble(token=TOKEN) as double:
        yield double


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[DownloadManager]:
    root = tmp_path / "loras"
    root.mkdir()
    downloads = DownloadManager(root, enabled=True, allowed_hosts=LOOPBACK, chunk_bytes=16 * 1024)
    await downloads.start()
    try:
        yield downloads
    finally:
        await downloads.stop()


def request_for(civitai: CivitaiDouble, version: FakeVersion, **changes: Any) -> DownloadRequest:
    file = version.files[0]
    values: dict[str, Any] = {
        "id": f"test-{version.id}",
        "url": f"{civitai.base_url}/api/download/models/{version.id}",
        "path": f"civitai/{version.id}-{file.name}",
        "sha256": file.hashes["SHA256"].lower(),
        "kind": "lora",
        "size_bytes": len(file.data),
        "max_bytes": 64 << 20,
        "timeout_s": 30.0,
        "stall_s": 5.0,
        **changes,
    }
    return DownloadRequest(**values)


async def fetch(manager: DownloadManager, request: DownloadRequest) -> DownloadStatus:
    manager.submit(request)
    return await asyncio.wait_for(manager.wait(request.id), 30)


def leftovers(root: Path) -> list[str]:
    """Everything under the folder: a refused download must leave nothing, not even a temp folder."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.name.startswith(TEMP_PREFIX))


def version_with(data: bytes, *, version_id: int = 135931, name: str = "pixels.safetensors", **kwargs: Any) -> FakeVersion:
    file_kwargs = {k: kwargs.pop(k) for k in ("behaviour", "size_bytes", "format", "type") if k in kwargs}
    return FakeVersion(id=version_id, model_id=120096, files=[FakeFile(id=version_id * 10, name=name, data=data, **file_kwargs)], **kwargs)


async def test_a_verified_file_lands_in_place_and_the_token_never_reaches_the_storage_host(
    civitai: CivitaiDouble, manager: DownloadManager, lora_bytes: bytes
) -> None:
    civitai.storage_host = "localhost"
    manager.rules = tuple(HostRule.parse(h) for h in ("http://127.0.0.1", "http://localhost"))
    version = civitai.add(version_with(lora_bytes, login_required=True))
    status = await fetch(manager, request_for(civitai, version, auth_token=TOKEN))
    assert status.state == "done", status.error
    assert status.file is not None and status.file.kind == "lora" and status.file.path == f"civitai/{version.id}-pixels.safetensors"
    assert status.file.sha256 == version.files[0].hashes["SHA256"].lower()
    assert status.received == status.total == len(lora_bytes) and not status.reused
    assert (manager.root / status.path).read_bytes() == lora_bytes
    assert leftovers(manager.root) == [status.path]
    # The token went to the API host's download route and nowhere else (not to the storage host).
    sent = {path.split("?")[0].split("/")[1]: auth for path, auth in civitai.requests}
    assert sent["api"] == f"Bearer {TOKEN}" and sent["files"] == ""
    assert TOKEN not in repr(request_for(civitai, version, auth_token=TOKEN))


async def test_the_same_file_is_downloaded_once_however_many_ask(
    civitai: CivitaiDouble, manager: DownloadManager, lora_bytes: bytes
) -> None:
    version = civitai.add(version_with(lora_bytes, behaviour=Behaviour(chunk_delay=0.01)))
    first, second = request_for(civitai, version, id="one"), request_for(civitai, version, id="two")
    assert manager.submit(first).id == "one"
    assert manager.submit(second).id == "one"  # joined the download already writing there
    assert manager.submit(first).id == "one"
    status = await asyncio.wait_for(manager.wait("one"), 30)
    assert status.state == "done" and civitai.downloads[version.files[0].id] == 1
    # Asked again once it is there: answered from the disk, nothing downloaded.
    again = await fetch(manager, request_for(civitai, version, id="three"))
    assert again.state == "done" and again.reused and civitai.downloads[version.files[0].id] == 1
    # A different file where that one lies is refused, and the one on disk is kept.
    other = request_for(civitai, version, id="four", sha256="0" * 64)
    refused = await fetch(manager, other)
    assert refused.error is not None and refused.error["reason"] == "exists_different"
    assert (manager.root / version.files[0].name).exists() is False
    assert (manager.root / status.path).read_bytes() == lora_bytes


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown version", "not_found"),
        ("login without token", "login_required"),
        ("login page redirect", "login_required"),
        ("wrong token", "token_refused"),
        ("redirect to another host", "redirect_refused"),
        ("stall", "stalled"),
        ("truncated", "truncated"),
        ("larger than announced", "too_large"),
        ("over the cap", "too_large"),
        ("wrong hash", "hash_mismatch"),
        ("pickle content", "pickle"),
        ("pickle file name", "pickle"),
        ("archive", "archive"),
        ("checkpoint as a LoRA", "wrong_kind"),
        ("too slow", "timeout"),
    ],
)
async def test_bad_downloads_are_refused_and_leave_nothing(
    case: str, reason: str, civitai: CivitaiDouble, manager: DownloadManager, lora_bytes: bytes, demo_assets: Any
) -> None:
    changes: dict[str, Any] = {}
    version = version_with(lora_bytes)
    file = version.files[0]
    if case == "unknown version":
        changes["url"] = f"{civitai.base_url}/api/download/models/999"
    elif case in ("login without token", "login page redirect", "wrong token"):
        version.login_required = True
        civitai.login_redirect = case == "login page redirect"
        if case == "wrong token":
            changes["auth_token"] = "expired-token"
    elif case == "redirect to another host":
        civitai.storage_host = "localhost"
    elif case == "stall":
        file.behaviour = Behaviour(stall_after=20_000)
        changes["stall_s"] = 0.4
    elif case == "truncated":
        file.behaviour = Behaviour(truncate_after=len(lora_bytes) // 2)
    elif case == "larger than announced":
        file.behaviour = Behaviour(extra_bytes=200_000)
    elif case == "over the cap":
        changes["max_bytes"] = 10_000
    elif case == "wrong hash":
        file.behaviour = Behaviour(serve_instead=bytes(reversed(lora_bytes)))
    elif case == "pickle content":
        file.data = pickle.dumps({"state_dict": {"w": [0.0] * 2000}}, protocol=4)
    elif case == "pickle file name":
        file.behaviour = Behaviour(disposition_name="pixels.ckpt")
    elif case == "archive":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("pixels.safetensors", lora_bytes)
        file.data = buffer.getvalue()
    elif case == "checkpoint as a LoRA":
        file.data = (demo_assets.model_root / demo_assets.models["sd15"]).read_bytes()
    elif case == "too slow":
        file.behaviour = Behaviour(chunk_delay=0.2)
        changes["timeout_s"] = 0.5
    civitai.add(version)
    status = await fetch(manager, request_for(civitai, version, **changes))
    assert status.state == "failed" and status.file is None
    assert status.error is not None and status.error["code"] == "download_failed"
    assert status.error["reason"] == reason, status.error
    assert status.error["message"] and TOKEN not in status.error["message"]
    assert leftovers(manager.root) == []
    if case == "redirect to another host":
        assert civitai.downloads[file.id] == 0  # never followed


async def test_refused_before_anything_is_fetched(civitai: CivitaiDouble, tmp_path: Path, lora_bytes: bytes) -> None:
    version = civitai.add(version_with(lora_bytes))
    off = DownloadManager(tmp_path, enabled=False, allowed_hosts=LOOPBACK)
    with pytest.raises(EngineError, match="--allow-downloads") as refused:
        off.submit(request_for(civitai, version))
    assert refused.value.code is ErrorCode.DOWNLOAD_REFUSED
    on = DownloadManager(tmp_path, enabled=True)  # Civitai's hosts only: loopback is not one
    with pytest.raises(EngineError, match="does not download from 127.0.0.1"):
        on.submit(request_for(civitai, version))
    loopback = DownloadManager(tmp_path, enabled=True, allowed_hosts=LOOPBACK)
    for path, code in (("../escape.safetensors", ErrorCode.OUTSIDE_FOLDER), ("/etc/x.safetensors", ErrorCode.OUTSIDE_FOLDER),
                       ("civitai/x.ckpt", ErrorCode.NOT_SAFETENSORS), ("civitai/.hidden.safetensors", ErrorCode.OUTSIDE_FOLDER)):
        with pytest.raises(EngineError) as bad:
            loopback.submit(request_for(civitai, version, path=path))
        assert bad.value.code is code, path
    assert civitai.downloads == {} and leftovers(tmp_path) == []


def test_host_rules() -> None:
    civitai, subdomains, local = HostRule.parse("civitai.com"), HostRule.parse("*.r2.cloudflarestorage.com"), HostRule.parse("http://127.0.0.1:8080")
    assert civitai.allows("https", "civitai.com") and not civitai.allows("http", "civitai.com")
    assert not civitai.allows("https", "civitai.com.evil.example")
    assert subdomains.allows("https", "bucket.r2.cloudflarestorage.com") and not subdomains.allows("https", "r2.cloudflarestorage.com.evil")
    assert local.allows("http", "127.0.0.1") and local.pattern == "127.0.0.1"


async def test_stale_temporary_folders_are_removed_at_start(tmp_path: Path) -> None:
    stale = tmp_path / "civitai" / f"{TEMP_PREFIX}old"
    stale.mkdir(parents=True)
    (stale / "half.safetensors").write_bytes(b"\0" * 100)
    keep = tmp_path / "civitai" / "kept.safetensors"
    keep.write_bytes(b"x")
    await DownloadManager(tmp_path, enabled=True).start()
    assert not stale.exists() and keep.exists()


async def test_the_download_routes_through_the_engine_api(
    civitai: CivitaiDouble, tmp_path: Path, lora_bytes: bytes
) -> None:
    class IdleRunner:
        def health(self) -> dict[str, object]:
            return {"device": "cpu"}

    root = tmp_path / "loras"
    root.mkdir()
    app = create_app(
        JobManager(IdleRunner()),  # type: ignore[arg-type]
        models_root=tmp_path,
        loras_root=root,
        token="engine-token-0123456789",
        downloads=DownloadManager(root, enabled=True, allowed_hosts=LOOPBACK),
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    version = civitai.add(version_with(lora_bytes))
    try:
        async with EngineClient(str(server.make_url("")).rstrip("/"), token="engine-token-0123456789") as engine:
            started = await engine.start_download(request_for(civitai, version))
            assert started.state in ("queued", "running", "verifying", "done")
            for _ in range(300):
                status = await engine.download_status(started.id)
                if status.state in ("done", "failed"):
                    break
                await asyncio.sleep(0.02)
            assert status.state == "done" and status.file is not None and status.file.kind == "lora"
            with pytest.raises(EngineError) as unknown:
                await engine.download_status("nope")
            assert unknown.value.code is ErrorCode.UNKNOWN_JOB
        async with EngineClient(str(server.make_url("")).rstrip("/")) as stranger:
            with pytest.raises(EngineError) as refused:
                await stranger.start_download(request_for(civitai, version, id="again"))
            assert refused.value.code is ErrorCode.UNAUTHORIZED
    finally:
        await server.close()
    assert os.listdir(root) == ["civitai"]


def test_downloads_are_off_unless_the_operator_turns_them_on(tmp_path: Path) -> None:
    from engine.config import parse_serve_args
    from engine.downloads import DEFAULT_DOWNLOAD_HOSTS

    folders = ["--models", str(tmp_path), "--loras", str(tmp_path)]
    env = {"ATELIER_ENGINE_TOKEN": "engine-token-0123456789"}
    off = parse_serve_args(folders, env)
    assert not off.allow_downloads and off.download_hosts == DEFAULT_DOWNLOAD_HOSTS
    on = parse_serve_args([*folders, "--allow-downloads", "--download-hosts", "http://127.0.0.1, civitai.com"], env)
    assert on.allow_downloads and on.download_hosts == ("http://127.0.0.1", "civitai.com")
    by_env = parse_serve_args(folders, {**env, "ATELIER_ENGINE_ALLOW_DOWNLOADS": "true"})
    assert by_env.allow_downloads
    with pytest.raises(ValueError, match="true or false"):
        parse_serve_args(folders, {**env, "ATELIER_ENGINE_ALLOW_DOWNLOADS": "maybe"})
