"""A real engine process, a real SQLite registry and the Discord double, wired to the bot.

The engine runs as a subprocess (``python -m engine serve``) on the tiny demo models, once
per session; each test gets a fresh double, a fresh registry seeded with the demo models and
LoRAs (registered from the engine's own inspection, as ``/lora add`` would) and a bot
started with its real ``start()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import AtelierBot
from bot.assembly import build_bot
from bot.jobs import EngineLink
from bot.operator.config import BotConfig
from bot.registry import LoraEntry, ModelEntry, Registry
from engine.client import EngineClient
from sandbox.discord_double import (
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    Channel,
    DiscordDouble,
    Guild,
    Member,
    run_bot,
)
from tests.conftest import ENGINE_TOKEN

SD15 = "tiny-sd15"
SDXL = "tiny-sdxl"
DEMO_LORAS = ("watercolor", "pixel-art", "captain-nova", "watercolor-xl", "pixel-art-xl")
#: Fast settings for every generation in the bot tests (tiny model, 2 steps, 256²).
FAST = {"model": SD15, "steps": 2, "size": "256x256"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_command(demo_assets: Any, port: int, lora_root: Path | None = None) -> list[str]:
    return [
        sys.executable, "-m", "engine", "serve",
        "--models", str(demo_assets.model_root), "--loras", str(lora_root or demo_assets.lora_root),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the engine did not start within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def engine_subprocess(demo_assets: Any, log: Path, *extra: str, lora_root: Path | None = None) -> Iterator[str]:
    """``python -m engine serve`` on the demo models, its output in ``log``; yields its URL."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        command = [*engine_command(demo_assets, port, lora_root), *extra]
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def engine_url(demo_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One engine subprocess for the whole bot suite."""
    with engine_subprocess(demo_assets, tmp_path_factory.mktemp("engine-log") / "engine.log") as url:
        yield url


async def seed_registry(registry: Registry, guild_id: int, engine: EngineClient, demo_assets: Any, actor: int) -> None:
    """Register the demo models and LoRAs from the engine's inspection of the real files."""
    sd15 = await engine.inspect("model", demo_assets.models["sd15"])
    sdxl = await engine.inspect("model", demo_assets.models["sdxl"])
    await registry.models.add(
        guild_id,
        ModelEntry.from_file_info(sd15, name=SD15, default_steps=2, default_width=256, default_height=256),
        actor,
    )
    await registry.models.add(guild_id, ModelEntry.from_file_info(sdxl, name=SDXL, default_steps=2), actor)
    await registry.settings.update(guild_id, actor, default_model=SD15)
    for name in DEMO_LORAS:
        demo = demo_assets.lora(name)
        info = await engine.inspect("lora", demo.file)
        await registry.loras.add(guild_id, LoraEntry.from_file_info(info, name=name, description=demo.description), actor)


@dataclass
class World:
    double: DiscordDouble
    guild: Guild
    channel: Channel
    alice: Member
    bob: Member
    admin: Member
    moderator: Member
    registry: Registry
    engine: EngineClient
    bot: AtelierBot
    db_path: Path
    engine_url: str


#: The settings every test bot starts from (its ``BotConfig``), fast where a test waits on them.
TEST_SETTINGS: dict[str, Any] = {"status_interval": 0.3, "retry_wait": 2.0, "image_classifier": "off"}
_SETTING_NAMES = {f.name for f in dataclasses.fields(BotConfig)}


def bot_config(**settings: Any) -> BotConfig:
    """A ``BotConfig`` as an operator would write it, on the tests' fast defaults."""
    return BotConfig(**{**TEST_SETTINGS, **settings})


def make_bot(
    registry: Registry, engine: EngineClient | None, *, engines: Sequence[Any] = (), **options: Any
) -> AtelierBot:
    """The bot as ``python -m bot`` builds it (:func:`bot.assembly.build_bot`), on the test's
    registry and engine. ``options`` named like a setting (``BotConfig``: ``retry_wait``,
    ``allowed_guilds``, ``civitai_fetch``...) go into its config; the rest (``safety``,
    ``purge_interval_s``, ``fetch_poll_interval``...) are the few things no setting gives."""
    settings = {key: options.pop(key) for key in list(options) if key in _SETTING_NAMES}
    links = [*([EngineLink(engine)] if engine is not None else []), *engines]
    return build_bot(bot_config(**settings), registry=registry, engines=links, guild_ready_timeout=0.1, **options)


@pytest.fixture
async def world(engine_url: str, demo_assets: Any, tmp_path: Path) -> AsyncIterator[World]:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        alice = double.add_member(guild, "alice")
        bob = double.add_member(guild, "bob")
        admin = double.add_member(guild, "admin", permissions=MANAGE_GUILD)
        moderator = double.add_member(guild, "moderator", permissions=MANAGE_MESSAGES)
        db_path = tmp_path / "atelier.sqlite3"
        registry = await Registry.open(db_path)
        engine = EngineClient(engine_url, token=ENGINE_TOKEN)
        try:
            await seed_registry(registry, guild.id, engine, demo_assets, admin.user.id)
            bot = make_bot(registry, engine)
            async with run_bot(bot, double):
                yield World(
                    double, guild, channel, alice, bob, admin, moderator, registry, engine, bot, db_path, engine_url
                )
        finally:
            await engine.close()
            await registry.close()


def png_parameters(data: bytes) -> str:
    from engine.png_metadata import read_png_metadata

    return read_png_metadata(data)["parameters"] or ""


def embed_total(embed: dict[str, Any]) -> int:
    """Discord's count: title, description, field names and values, footer text, author name."""
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    for field in embed.get("fields") or []:
        total += len(field.get("name") or "") + len(field.get("value") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    return total


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)[:2000]
