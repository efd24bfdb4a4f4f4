"""LoRAs from Civitai end to end: the Discord double, a real engine process that downloads (into
its own copy of the demo LoRA folder) from the Civitai double on loopback, and the real registry.

An admin adds ``civitai:ID@VERSION`` and watches it download; a member then uses it by its AIR
in /imagine. Also: two servers fetching one version download it once, a fetch never holds up a
generation, refusals reach the admin with nothing half-written or registered, "Look up on
Civitai" fills in a hand-registered file, and a named role fetches on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.registry import LoraEntry, Registry
from bot.ui import views
from engine.client import EngineClient
from engine.downloads import TEMP_PREFIX
from engine.support import runs_text
from sandbox.discord_double import MANAGE_GUILD, DiscordDouble, InteractionHandle, Member, run_bot
from tests import dit_files
from tests.bot.conftest import (
    FAST,
    World,
    engine_subprocess,
    make_bot,
    png_parameters,
    seed_registry,
)
from tests.bot.test_imagine_flow import is_result
from tests.civitai_double import (
    Behaviour,
    CivitaiDouble,
    FakeFile,
    FakeVersion,
    safetensors_with_metadata,
)
from tests.conftest import ENGINE_TOKEN

CIVITAI_TOKEN = "civitai-key-never-shown-0123"
PROGRESS_MARKS = ("🔎", "⬇️", "🔐", "📝")


@dataclass
class FetchEngine:
    url: str
    lora_root: Path


@pytest.fixture(scope="module")
def fetch_engine(demo_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FetchEngine]:
    """An engine that may download (from loopback only), on its own copy of the demo LoRAs."""
    base = tmp_path_factory.mktemp("fetch-engine")
    lora_root = base / "loras"
    shutil.copytree(demo_assets.lora_root, lora_root)
    log = base / "engine.log"
    downloads = ("--allow-downloads", "--download-hosts", "http://127.0.0.1")
    with engine_subprocess(demo_assets, log, *downloads, lora_root=lora_root) as url:
        yield FetchEngine(url, lora_root)
    assert CIVITAI_TOKEN not in log.read_text(errors="replace")  # never logged


@pytest.fixture
async def civitai() -> AsyncIterator[CivitaiDouble]:
    async with CivitaiDouble(token=CIVITAI_TOKEN) as double:
        yield double


@contextlib.asynccontextmanager
async def studio(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path, *, guilds: int = 1, **settings: Any
) -> AsyncIterator[tuple[World, list[Any]]]:
    """A bot that may fetch (``civitai_*`` settings from ``settings``), its servers seeded with the demo models."""
    async with DiscordDouble() as double:
        servers = []
        registry = await Registry.open(tmp_path / "atelier.sqlite3")
        engine = EngineClient(fetch_engine.url, token=ENGINE_TOKEN)
        try:
            for index in range(guilds):
                guild = double.add_guild("Studio" if index == 0 else f"Studio {index + 1}")
                channel = double.add_channel(guild, "studio")
                admin = double.add_member(guild, f"admin{index}", permissions=MANAGE_GUILD)
                await seed_registry(registry, guild.id, engine, demo_assets, admin.user.id)
                servers.append((guild, channel, admin))
            guild, channel, admin = servers[0]
            alice = double.add_member(guild, "alice")
            fetching = {
                "civitai_fetch": True, "civitai_url": civitai.base_url, "civitai_token": CIVITAI_TOKEN,
                "civitai_stall_timeout": 5.0, "civitai_download_timeout": 60.0, **settings,
            }  # fmt: skip
            bot = make_bot(registry, engine, fetch_poll_interval=0.05, status_interval=0.05, **fetching)
            async with run_bot(bot, double):
                world = World(double, guild, channel, alice, alice, admin, admin, registry, engine, bot, tmp_path, fetch_engine.url)
                yield world, servers
        finally:
            await engine.close()
            await registry.close()


def lora_file(demo_assets: Any, title: str) -> bytes:
    """A builder-made SD 1.5 LoRA (the demo pixel-art tensors) that is a file of its own."""
    return safetensors_with_metadata(demo_assets.lora_root / "sd15" / "pixel-art.safetensors", ss_output_name=title)


def pixel_quest(demo_assets: Any, version_id: int, **changes: Any) -> FakeVersion:
    behaviour = changes.pop("behaviour", None) or Behaviour()
    values: dict[str, Any] = {
        "id": version_id, "model_id": 120096, "model_name": "Pixel Quest", "base_model": "SD 1.5",
        "trained_words": ["pixelquest", "8-bit"], "model_description": "<p>Chunky <b>pixels</b>.</p>", "tags": ["style"],
        "images": [{"url": f"https://image.civitai.invalid/{version_id}.jpeg", "nsfwLevel": 1, "type": "image"}],
        "files": [FakeFile(id=version_id * 10, name="pixel_quest.safetensors", data=lora_file(demo_assets, f"pq-{version_id}"), behaviour=behaviour)],
    }  # fmt: skip
    values.update(changes)
    return FakeVersion(**values)


def done(handle: InteractionHandle) -> bool:
    original = handle.original
    return original is not None and not original.loading and not original.content.startswith(PROGRESS_MARKS)


async def add_source(world: World, who: Member, source: str, channel: Any = None, **options: Any) -> InteractionHandle:
    handle = await world.double.slash(who, channel or world.channel, "lora", {"source": source, **options}, subcommand="add")
    assert await handle.wait_response(3) == 5
    return handle


async def final_text(handle: InteractionHandle, within: float = 60) -> str:
    await handle.wait_until(lambda: done(handle), within, "the fetch's last word")
    assert handle.original is not None
    return handle.original.content


def progress_seen(world: World, handle: InteractionHandle) -> list[str]:
    return [
        str(r.payload.get("content"))
        for r in world.double.requests_matching(f"PATCH /webhooks/*/{handle.token}/messages/@original")
        if isinstance(r.payload, dict) and r.payload.get("content")
    ]


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


async def test_an_admin_adds_a_lora_by_air_and_a_member_uses_it_by_air(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    version = civitai.add(pixel_quest(demo_assets, 135931, login_required=True))
    async with studio(fetch_engine, demo_assets, civitai, tmp_path) as (world, _):
        handle = await add_source(world, world.admin, "civitai:120096@135931")
        text = await final_text(handle)
        assert text.startswith("✅ Registered **Pixel Quest** from Civitai"), text
        seen = progress_seen(world, handle)
        assert any(s.startswith("🔎 Looking up `civitai:120096@135931`") for s in seen)
        assert any(s.startswith("⬇️ Downloading **Pixel Quest** · SD 1.5") and "%" in s for s in seen), seen
        assert all(CIVITAI_TOKEN not in s for s in seen + [text])
        entry = await world.registry.loras.get(world.guild.id, "Pixel Quest")
        assert entry is not None
        file = version.files[0]
        assert entry.file == "civitai/135931-pixel_quest.safetensors"
        assert entry.sha256 == file.hashes["SHA256"].lower() and entry.autov2 == file.hashes["AutoV2"]
        assert entry.source == "urn:air:sd1:lora:civitai:120096@135931"
        assert (entry.architecture, entry.family, entry.lora_format, entry.category.value) == ("sd15", "sd15", "lora", "style")
        assert (entry.base_model, entry.variant) == ("SD 1.5", None)  # Civitai's baseModel is kept
        assert entry.trigger_words == ("pixelquest", "8-bit") and entry.description == "Chunky pixels."
        assert entry.preview_url == "https://image.civitai.invalid/135931.jpeg" and not entry.nsfw
        assert (fetch_engine.lora_root / entry.file).read_bytes() == file.data and not leftovers(fetch_engine.lora_root)
        card = handle.original
        assert card is not None and card.embeds[0]["title"] == "LoRA · Pixel Quest"
        assert [b.custom_id for b in card.buttons] == [f"atelier:lora:edit:{entry.id}", f"atelier:lora:remove:{entry.id}"]
        (audit,) = [a for a in await world.registry.audit.entries(world.guild.id) if a.target == "Pixel Quest"]
        assert audit.action == "lora.add" and audit.actor_id == world.admin.user.id and audit.details["source"] == entry.source

        # A member names it by its AIR inline, in Civitai's short form, with a weight.
        before = {m.id for m in world.double.messages(world.channel)}
        ask = await world.double.slash(
            world.alice, world.channel, "imagine", {**FAST, "prompt": "a castle <lora:civitai:120096@135931:0.7>", "seed": 7}
        )
        assert await ask.wait_response(3) == 5
        result = await world.double.wait_for_message(world.channel, lambda m: is_result(m) and m.id not in before, within=90)
        parameters = png_parameters(result.attachments[0].data)
        assert "pixelquest, 8-bit, a castle" in parameters  # its trigger words, added as for any LoRA
        assert f"Pixel Quest: {entry.a1111_hash}" in parameters  # A1111's Lora hashes, by its name
        assert civitai.downloads[file.id] == 1

        # Asked again (by its link this time): it is registered already, nothing is downloaded.
        again = await add_source(world, world.admin, "https://civitai.com/models/120096?modelVersionId=135931")
        assert "has it already" in await final_text(again) and civitai.downloads[file.id] == 1
        by_hash = await add_source(world, world.admin, file.hashes["AutoV2"])
        assert "the LoRA **Pixel Quest**" in await final_text(by_hash) and civitai.downloads[file.id] == 1
        assert any(path.startswith(f"/api/v1/model-versions/by-hash/{file.hashes['AutoV2']}") for path, _ in civitai.requests)


async def test_two_servers_fetching_one_version_download_it_once_and_jobs_go_on(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    version = civitai.add(pixel_quest(demo_assets, 200001, behaviour=Behaviour(gate=gate)))
    # The download is held open while an image is made: the stall limit must outlast that job
    # (a first job on a loaded 2-core machine can take well over the usual 5 s).
    async with studio(fetch_engine, demo_assets, civitai, tmp_path, guilds=2, civitai_stall_timeout=120.0) as (world, servers):
        (_, _, first_admin), (second_guild, second_channel, second_admin) = servers
        first = await add_source(world, first_admin, "urn:air:sd1:lora:civitai:120096@200001")
        second = await add_source(world, second_admin, "civitai:120096@200001", channel=second_channel)
        for _ in range(200):
            if civitai.downloads[version.files[0].id]:
                break
            await asyncio.sleep(0.05)
        # The download is under way (held by the double); a generation runs meanwhile.
        before = {m.id for m in world.double.messages(world.channel)}
        ask = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "a lamp"})
        assert await ask.wait_response(3) == 5
        await world.double.wait_for_message(world.channel, lambda m: is_result(m) and m.id not in before, within=90)
        assert not done(first) and not done(second)
        assert await world.registry.loras.get(world.guild.id, "Pixel Quest") is None
        gate.set()
        assert (await final_text(first)).startswith("✅ Registered **Pixel Quest**")
        assert (await final_text(second)).startswith("✅ Registered **Pixel Quest**")
        assert civitai.downloads[version.files[0].id] == 1
        one = await world.registry.loras.get(world.guild.id, "Pixel Quest")
        other = await world.registry.loras.get(second_guild.id, "Pixel Quest")
        assert one is not None and other is not None and one.file == other.file and one.added_by != other.added_by
        assert world.bot.sources.fetcher._reserved == {}  # nothing under way: nothing kept per server


async def test_bad_sources_are_refused_with_nothing_written_or_registered(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    checkpoint = (demo_assets.model_root / demo_assets.models["sd15"]).read_bytes()
    locked = civitai.add(pixel_quest(demo_assets, 300001, login_required=True))
    civitai.add(pixel_quest(demo_assets, 300002, model_type="Checkpoint", model_name="Dreamy"))
    disguised = civitai.add(pixel_quest(demo_assets, 300003, model_name="Not A Lora", files=[
        FakeFile(id=3000030, name="not_a_lora.safetensors", data=checkpoint)]))  # fmt: skip
    civitai.add(pixel_quest(demo_assets, 300004, model_name="SD3 Thing", base_model="SD 3.5 Large"))
    civitai.add(pixel_quest(demo_assets, 300005, model_name="Pickled", files=[
        FakeFile(id=3000050, name="pickled.pt", data=b"\x80\x04...", format="PickleTensor")]))  # fmt: skip
    wrong = civitai.add(pixel_quest(demo_assets, 300006, model_name="Tampered"))
    wrong.files[0].behaviour = Behaviour(serve_instead=bytes(reversed(wrong.files[0].data)))
    async with studio(fetch_engine, demo_assets, civitai, tmp_path, civitai_token="") as (world, _):
        cases = {
            "civitai:120096@999999": "Civitai has no model version 999999",
            "civitai:120096@300001": "can only be downloaded with a login",
            "civitai:120096@300002": "is a checkpoint (a full model)",
            "civitai:120096@300003": "a full model (a checkpoint), not a LoRA as announced",
            "civitai:120096@300004": f"made for SD 3 (Civitai: SD 3.5 Large), and this bot's engine runs {runs_text()} models only",
            "civitai:120096@300005": "is a pickle",
            "civitai:120096@300006": "does not have the sha256 the source announced",
            "https://example.com/loras/1": "Civitai link",
            "just pixels please": "Accepted shapes",
        }
        for source, needle in cases.items():
            text = await final_text(await add_source(world, world.admin, source))
            assert text.startswith("Nothing was fetched") and needle in text, (source, text)
        assert [e.name for e in await world.registry.loras.search(world.guild.id, "", sort="name", limit=50) if e.source] == []
        assert not list((fetch_engine.lora_root / "civitai").glob("30000*")) and not leftovers(fetch_engine.lora_root)
        assert civitai.downloads[locked.files[0].id] == 0 and civitai.downloads[disguised.files[0].id] == 1

        # Members cannot fetch; the operator's switch and quota are honoured.
        member = await world.double.slash(world.alice, world.channel, "lora", {"source": "civitai:120096@300001"}, subcommand="add")
        assert await member.wait_response(3) == 4
        assert "Manage Server" in member.response_payloads[-1]["data"]["content"]
        fetcher = world.bot.sources.fetcher
        fetcher.settings = replace(fetcher.settings, quota_bytes=1000)
        assert "download quota" in await final_text(await add_source(world, world.admin, "civitai:120096@300006"))
        fetcher.settings = replace(fetcher.settings, enabled=False)
        assert "Fetching from Civitai is off" in await final_text(await add_source(world, world.admin, "civitai:120096@300006"))


async def test_look_up_on_civitai_fills_in_a_hand_registered_lora(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    hand_made = (fetch_engine.lora_root / demo_assets.lora("watercolor").file).read_bytes()
    civitai.add(FakeVersion(
        id=400001, model_id=4000, model_name="Wet Paper", base_model="SD 1.5", trained_words=["wet watercolor"],
        description="<p>Soft washes.</p>", files=[FakeFile(id=4000010, name="wet_paper.safetensors", data=hand_made)],
    ))  # fmt: skip
    async with studio(fetch_engine, demo_assets, civitai, tmp_path) as (world, _):
        info = await world.double.slash(world.admin, world.channel, "lora", {"name": "watercolor"}, subcommand="info")
        card = await info.wait_followup()
        entry = await world.registry.loras.get(world.guild.id, "watercolor")
        assert entry is not None and entry.source is None
        lookup = await world.double.click(world.admin, card, f"atelier:lora:lookup:{entry.id}")
        proposal = await lookup.wait_followup()
        assert "Apply these changes?" in proposal.content
        fields = {f["name"]: f["value"] for f in proposal.embeds[0]["fields"]}
        assert fields["Name (new)"] == "Wet Paper" and fields["Trigger words (new)"] == "wet watercolor"
        assert fields["AIR (new)"] == "urn:air:sd1:lora:civitai:4000@400001"
        # Nothing changes until the admin applies it; members cannot.
        assert (await world.registry.loras.get(world.guild.id, "watercolor")) == entry
        refused = await world.double.click(world.alice, proposal, f"atelier:civitai:apply:{entry.id}:400001")
        assert "Manage Server" in (await refused.wait_followup()).content
        applied = await world.double.click(world.admin, proposal, f"atelier:civitai:apply:{entry.id}:400001")
        assert "Updated **Wet Paper** from Civitai" in (await applied.wait_followup()).content
        updated = await world.registry.loras.get(world.guild.id, "Wet Paper")
        assert updated is not None and updated.id == entry.id and updated.file == entry.file
        assert updated.trigger_words == ("wet watercolor",) and updated.source == "urn:air:sd1:lora:civitai:4000@400001"
        assert updated.description == entry.description  # it had one: not replaced
        assert fields["Civitai base model (new)"] == "SD 1.5" and updated.base_model == "SD 1.5"
        # A forged button naming another version changes nothing.
        civitai.add(pixel_quest(demo_assets, 400002))
        channel = world.bot.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("forged", view=views.civitai_apply_view(entry.id or 0, 400002))
        forged_message = world.double.message_by_id(sent.id)
        assert forged_message is not None
        forged = await world.double.click(world.admin, forged_message, f"atelier:civitai:apply:{entry.id}:400002")
        assert "does not contain this LoRA's file" in (await forged.wait_followup()).content
        assert (await world.registry.loras.get(world.guild.id, "Wet Paper")) == updated
        assert civitai.downloads == {}  # a look-up downloads nothing


async def test_a_named_role_fetches_on_demand_from_imagine(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    civitai.add(pixel_quest(demo_assets, 500001, model_name="Pixel Quest Ondemand"))
    async with studio(fetch_engine, demo_assets, civitai, tmp_path) as (world, _):
        artists = world.double.add_role(world.guild, "artists")
        bea = world.double.add_member(world.guild, "bea", roles=[artists])
        options = {**FAST, "prompt": "a boat", "lora1": "civitai:120096@500001"}
        refused = await world.double.slash(bea, world.channel, "imagine", options)
        assert await refused.wait_response(3) == 5
        text = (await refused.wait_followup()).content
        assert "No LoRA in this server has the AIR `civitai:120096@500001`" in text and "/lora add source:" in text
        await world.registry.settings.update(world.guild.id, world.admin.user.id, fetch_roles=(artists.id,))
        before = {m.id for m in world.double.messages(world.channel)}
        ask = await world.double.slash(bea, world.channel, "imagine", options)
        assert await ask.wait_response(3) == 5
        result = await world.double.wait_for_message(world.channel, lambda m: is_result(m) and m.id not in before, within=90)
        assert "Pixel Quest Ondemand" in png_parameters(result.attachments[0].data)
        entry = await world.registry.loras.get(world.guild.id, "Pixel Quest Ondemand")
        assert isinstance(entry, LoraEntry) and entry.added_by == bea.user.id
        assert any("Downloading" in s for s in progress_seen(world, ask))
        # Others still need an admin.
        handle = await world.double.slash(world.alice, world.channel, "imagine", {**options, "lora1": "civitai:1@2"})
        assert await handle.wait_response(3) == 5
        assert "No LoRA in this server has the AIR" in (await handle.wait_followup()).content


async def test_a_civitai_file_the_engine_cannot_run_is_not_registered(
    fetch_engine: FetchEngine, demo_assets: Any, civitai: CivitaiDouble, tmp_path: Path
) -> None:
    """Civitai labels it SDXL, so the plan lets it through; the downloaded file is an SD 3
    LoRA (FLUX.1 runs since issue 18, so this is the refused DiT now): its header wins, and the
    engine's verdict keeps it out of the registry."""
    data = dit_files.sd3_peft_lora(tmp_path / "sneaky.safetensors").read_bytes()
    civitai.add(pixel_quest(demo_assets, 310001, model_name="Sneaky Flux", base_model="SDXL 1.0",
                            files=[FakeFile(id=3100010, name="sneaky.safetensors", data=data)]))  # fmt: skip
    async with studio(fetch_engine, demo_assets, civitai, tmp_path) as (world, _):
        text = await final_text(await add_source(world, world.admin, "civitai:120096@310001"))
        assert text.startswith("Nothing was fetched"), text
        assert "is a LoRA for SD 3" in text and f"this engine runs {runs_text()} models only" in text, text
        assert "It was not registered" in text
        assert await world.registry.loras.get(world.guild.id, "Sneaky Flux") is None
        assert not [e for e in await world.registry.loras.search(world.guild.id, "", sort="name", limit=50) if e.source]
