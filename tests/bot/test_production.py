"""Features through the real ``python -m bot`` process, configured only by its environment.

The other bot tests build the bot in the test process (through :func:`bot.assembly.build_bot`,
as ``python -m bot`` does); these start the entry point itself, against the Discord double, so
that a setting that never reaches the running bot, or an object the entry point builds
differently, fails here. Each process costs seconds, so each test covers a whole feature.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import MANAGE_GUILD, DiscordDouble, InteractionHandle
from tests.bot.conftest import FAST, SD15, free_port, png_parameters, seed_registry
from tests.bot.test_admin_registry import answer
from tests.bot.test_imagine_flow import is_result
from tests.bot.test_process import wait_commands
from tests.bot.test_sources_flow import CIVITAI_TOKEN, done, pixel_quest
from tests.bot_process import end_process, spawn_bot
from tests.civitai_double import CivitaiDouble
from tests.conftest import ENGINE_TOKEN

#: Generic answer of AtelierTree.on_error: an exception nobody meant to raise.
GENERIC_ERROR = "Something went wrong on the bot's side"


def answers(handle: InteractionHandle) -> list[str]:
    """Everything the member was told privately: the original reply and any followups."""
    texts = [handle.original.content] if handle.original is not None else []
    return texts + [m.content for m in handle.followups]


async def test_python_m_bot_fetches_a_lora_from_civitai_and_a_member_uses_it_by_air(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    """The process starts its own engine with downloads on (hosts: the Civitai double on
    loopback); an admin adds ``civitai:ID@VERSION``, a member names it by its AIR in /imagine."""
    lora_root = tmp_path / "loras"
    shutil.copytree(demo_assets.lora_root, lora_root)
    async with CivitaiDouble(token=CIVITAI_TOKEN) as civitai, DiscordDouble() as double:
        version = civitai.add(pixel_quest(demo_assets, 135931, login_required=True))
        file = version.files[0]
        guild = double.add_guild("Studio")
        channel = double.add_channel(guild, "studio")
        admin = double.add_member(guild, "admin", permissions=MANAGE_GUILD)
        alice = double.add_member(guild, "alice")
        db = tmp_path / "atelier.sqlite3"
        async with await Registry.open(db) as registry, EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, guild.id, engine, demo_assets, admin.user.id)
        log = tmp_path / "bot.log"
        child = spawn_bot(
            double, tmp_path, "", log=log,
            ATELIER_MODEL_DIR=str(demo_assets.model_root), ATELIER_LORA_DIR=str(lora_root),
            ATELIER_ENGINE_PORT=str(free_port()), ATELIER_ENGINE_START_TIMEOUT="240",
            ATELIER_CIVITAI_FETCH="true", ATELIER_CIVITAI_URL=civitai.base_url,
            ATELIER_CIVITAI_DOWNLOAD_HOSTS="http://127.0.0.1", ATELIER_CIVITAI_TOKEN=CIVITAI_TOKEN,
            ATELIER_STATUS_INTERVAL="0.3", ATELIER_IMAGE_CLASSIFIER="off",
        )  # fmt: skip
        try:
            await wait_commands(double, within=300)  # the bot starts its engine first
            handle = await double.slash(admin, channel, "lora", {"source": "civitai:120096@135931"}, subcommand="add")
            assert await handle.wait_response(3) == 5
            await handle.wait_until(
                lambda: done(handle) or any(GENERIC_ERROR in t for t in answers(handle)), 90, "the fetch's last word"
            )
            assert not any(GENERIC_ERROR in t for t in answers(handle)), answers(handle)
            assert handle.original is not None
            assert handle.original.content.startswith("✅ Registered **Pixel Quest** from Civitai"), answers(handle)
            assert (lora_root / "civitai" / "135931-pixel_quest.safetensors").read_bytes() == file.data
            assert civitai.downloads[file.id] == 1
            # The download went through the login the operator configured, and only to loopback.
            assert any(auth == f"Bearer {CIVITAI_TOKEN}" for path, auth in civitai.requests if "/download/" in path)

            before = {m.id for m in double.messages(channel)}
            ask = await double.slash(
                alice, channel, "imagine", {**FAST, "prompt": "a castle <lora:civitai:120096@135931:0.7>", "seed": 7}
            )
            assert await ask.wait_response(3) == 5
            result = await double.wait_for_message(channel, lambda m: is_result(m) and m.id not in before, within=120)
            parameters = png_parameters(result.attachments[0].data)
            assert "pixelquest, 8-bit, a castle" in parameters
            assert "Pixel Quest: " in parameters
        finally:
            end_process(child)
    async with await Registry.open(db) as registry:
        entry = await registry.loras.get(guild.id, "Pixel Quest")
    assert entry is not None and entry.source == "urn:air:sd1:lora:civitai:120096@135931"
    assert entry.sha256 == file.hashes["SHA256"].lower() and entry.added_by == admin.user.id
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert CIVITAI_TOKEN not in text  # never logged, by the bot or its engine


async def test_python_m_bot_serves_the_allowed_servers_their_shared_files_and_its_owners(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    """ATELIER_ALLOWED_GUILDS, ATELIER_SHARES and ATELIER_OWNERS, as an operator sets them,
    reach the running bot: a server off the list is refused, the listed one sees only its
    share, and an owner without Manage Server administers it while a member cannot."""
    async with DiscordDouble() as double:
        home = double.add_guild("Studio")
        channel = double.add_channel(home, "studio")
        alice = double.add_member(home, "alice")
        operator = double.add_member(home, "operator")  # no Manage Server: an owner by the setting only
        stranger = double.add_guild("Strangers")
        hall = double.add_channel(stranger, "hall")
        outsider = double.add_member(stranger, "outsider", permissions=MANAGE_GUILD)
        async with await Registry.open(tmp_path / "atelier.sqlite3") as registry, EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
            await seed_registry(registry, home.id, engine, demo_assets, home.owner_id)
        shares = {str(home.id): ["lora:sd15/", "model:sd15-tiny.safetensors"], "*": []}
        log = tmp_path / "bot.log"
        child = spawn_bot(
            double, tmp_path, engine_url, log=log, ATELIER_IMAGE_CLASSIFIER="off",
            ATELIER_ALLOWED_GUILDS=str(home.id), ATELIER_SHARES=json.dumps(shares), ATELIER_OWNERS=str(operator.user.id),
        )  # fmt: skip
        try:
            await wait_commands(double)
            text = await answer(await double.slash(outsider, hall, "model", {}, subcommand="list"))
            assert "not enabled for this server" in text and str(stranger.id) in text
            offered = await double.autocomplete(outsider, hall, "lora", {"file": ""}, "file", subcommand="add")
            assert offered == []

            loras = await double.autocomplete(operator, channel, "lora", {"file": ""}, "file", subcommand="add")
            offered_files = {c["value"] for c in loras}
            assert "sd15/twin-kohya.safetensors" in offered_files
            assert not any(path.startswith("sdxl/") for path in offered_files)

            refused = await answer(await double.slash(alice, channel, "model", {"name": SD15}, subcommand="disable"))
            assert "Manage Server" in refused
            text = await answer(await double.slash(operator, channel, "model", {"name": SD15}, subcommand="disable"))
            assert "disabled" in text
            assert double.violations == []
        finally:
            end_process(child)
    async with await Registry.open(tmp_path / "atelier.sqlite3") as registry:
        model = await registry.models.get(home.id, SD15)
    assert model is not None and not model.enabled
    assert "Traceback" not in log.read_text(errors="replace")


async def test_python_m_bot_says_why_it_cannot_start(
    engine_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The start errors of bot.assembly end ``run()`` with a line for the operator, not a traceback."""
    from bot.__main__ import run

    base = {"DISCORD_TOKEN": "x", "ATELIER_DATA_DIR": str(tmp_path), "ATELIER_IMAGE_CLASSIFIER": "off"}
    wrong = {"ATELIER_ENGINE_URL": engine_url, "ATELIER_ENGINE_TOKEN": "a-wrong-token-of-some-length"}
    assert await run(env={**base, **wrong}) == 2
    assert "does not match" in capsys.readouterr().err
    # An engine that dies while starting (here: a "Python" that exits at once).
    # (Its folders exist: a missing folder is refused before any engine starts.)
    (tmp_path / "models").mkdir()
    (tmp_path / "loras").mkdir()
    broken = {
        "ATELIER_ENGINE_PYTHON": shutil.which("false") or "/bin/false",
        "ATELIER_ENGINE_PORT": str(free_port()),
        "ATELIER_MODEL_DIR": str(tmp_path / "models"),
        "ATELIER_LORA_DIR": str(tmp_path / "loras"),
    }
    assert await run(env={**base, **broken}) == 1
    assert "the engine exited with code 1 while starting" in capsys.readouterr().err
