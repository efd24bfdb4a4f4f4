"""The engine's shared secret: refused without it, served with it, never printed."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.engine_link.token import load_or_create
from engine.client import EngineClient
from engine.config import parse_serve_args
from engine.jobs import JobManager
from engine.protocol import EngineError, ErrorCode
from engine.server import create_app

TOKEN = "test-token-0123456789abcdef"


class _IdleRunner:
    """The job manager's runner, never asked to run anything here (auth is checked first)."""

    def health(self) -> dict[str, object]:
        return {"device": "cpu"}

    def inspect(self, path: Path) -> object:  # pragma: no cover - never reached without a token
        raise AssertionError("inspected without a token")


async def test_every_route_needs_the_token_but_a_bare_liveness_check(demo_assets) -> None:
    app = create_app(
        JobManager(_IdleRunner()),  # type: ignore[arg-type]
        models_root=demo_assets.model_root,
        loras_root=demo_assets.lora_root,
        token=TOKEN,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as raw:
            for method, path in [
                ("GET", "/files?kind=lora"),
                ("POST", "/inspect"),
                ("POST", "/jobs"),
                ("GET", "/jobs/x"),
                ("GET", "/jobs/x/events"),
                ("POST", "/jobs/x/cancel"),
                ("GET", "/jobs/x/images/0"),
                ("GET", "/no-such-route"),
            ]:
                async with raw.request(method, base + path, json={}) as response:
                    assert response.status == 401, (method, path)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    body = await response.json()
                    assert body["error"]["code"] == "unauthorized"
                    assert TOKEN not in await response.text()
            # Liveness without a token: up, and nothing else (no folders, no pid).
            async with raw.get(base + "/health") as response:
                assert response.status == 200 and await response.json() == {"status": "ok"}
            # A wrong token is refused even there, so a misconfigured client learns at once.
            async with raw.get(base + "/health", headers={"Authorization": "Bearer wrong-token-value"}) as response:
                assert response.status == 401

        async with EngineClient(base) as anonymous:
            with pytest.raises(EngineError) as caught:
                await anonymous.list_files("lora")
            assert caught.value.code is ErrorCode.UNAUTHORIZED
            assert "ATELIER_ENGINE_TOKEN" in caught.value.message
        async with EngineClient(base, token="a-wrong-token-of-length") as wrong:
            with pytest.raises(EngineError) as caught:
                await wrong.health()
            assert caught.value.code is ErrorCode.UNAUTHORIZED and "does not match" in caught.value.message
            assert "a-wrong-token" not in repr(wrong)
        async with EngineClient(base, token=TOKEN) as client:
            files = await client.list_files("lora")
            assert "sd15/watercolor.safetensors" in {f.path for f in files}
            health = await client.health()
            assert health["status"] == "ok" and "folders" in health and health["pid"] == os.getpid()
    finally:
        await server.close()


def test_the_engine_will_not_start_without_a_token(demo_assets, tmp_path: Path) -> None:
    folders = ["--models", str(demo_assets.model_root), "--loras", str(demo_assets.lora_root)]
    with pytest.raises(ValueError, match="needs a shared secret"):
        parse_serve_args(folders, env={})
    with pytest.raises(ValueError, match="at least 16"):
        parse_serve_args(folders, env={"ATELIER_ENGINE_TOKEN": "short"})
    config = parse_serve_args(folders, env={"ATELIER_ENGINE_TOKEN": TOKEN})
    assert config.token == TOKEN and TOKEN not in repr(config)
    token_file = tmp_path / "engine-token"
    token_file.write_text(TOKEN + "\n")
    assert parse_serve_args([*folders, "--token-file", str(token_file)], env={}).token == TOKEN


def test_the_bot_generates_the_token_once_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "engine-token"
    token = load_or_create(path)
    assert len(token) >= 40 and (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create(path) == token  # reused on the next start
    path.chmod(0o644)
    assert load_or_create(path) == token and (path.stat().st_mode & 0o777) == 0o600
