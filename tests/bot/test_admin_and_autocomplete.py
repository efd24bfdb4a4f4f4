"""Admin commands (default permission + run-time check), /lora add from the engine's files,
autocomplete filtered by architecture, and the other read-only commands."""

from __future__ import annotations

import discord
import pytest

from bot.registry import LoraEntry
from tests.bot.conftest import SD15, SDXL, World


async def test_admin_commands_carry_default_permissions_and_are_checked_at_run_time(world: World) -> None:
    registered = {c["name"]: c for c in world.double.registered_commands()}
    manage_guild = discord.Permissions(manage_guild=True).value
    assert int(registered["settings"]["default_member_permissions"]) == manage_guild
    assert all(c.get("dm_permission") is False or c.get("contexts") == [0] for c in registered.values())

    # Discord hides /settings from alice; a server can override that, so the bot checks too.
    with pytest.raises(PermissionError):
        await world.double.slash(world.alice, world.channel, "settings", {"max_loras": 5})
    handle = await world.double.slash(
        world.alice, world.channel, "settings", {"max_loras": 5}, bypass_permissions=True
    )
    await handle.wait_response(3)
    answer = handle.response_payloads[-1]["data"]
    assert answer["flags"] & 64 and "Manage Server" in answer["content"]
    assert (await world.registry.settings.get(world.guild.id)).max_loras == 3

    # /lora add lives in a group members use, so only the run-time check guards it.
    handle = await world.double.slash(
        world.alice, world.channel, "lora", {"file": "sd15/twin-kohya.safetensors"}, subcommand="add"
    )
    await handle.wait_response(3)
    assert "Manage Server" in handle.response_payloads[-1]["data"]["content"]
    assert await world.registry.loras.get(world.guild.id, "twin-kohya") is None

    handle = await world.double.slash(world.admin, world.channel, "settings", {"max_loras": 5, "queue_limit": 3})
    assert await handle.wait_response(3) == 5
    assert "Settings saved" in (await handle.wait_followup()).content
    settings = await world.registry.settings.get(world.guild.id)
    assert (settings.max_loras, settings.queue_limit_per_user) == (5, 3)

    # Step, CFG and size bounds too; checked together, so a minimum above a maximum is refused.
    handle = await world.double.slash(
        world.admin, world.channel, "settings", {"cfg_min": 2.5, "cfg_max": 12, "size_max": 1024, "steps_min": 2}
    )
    assert "Settings saved" in (await handle.wait_followup()).content
    settings = await world.registry.settings.get(world.guild.id)
    assert (settings.cfg_min, settings.cfg_max, settings.size_max, settings.steps_min) == (2.5, 12, 1024, 2)
    handle = await world.double.slash(world.admin, world.channel, "settings", {"size_min": 1001})
    refusal = (await handle.wait_followup()).content
    assert "multiple of 8" in refusal
    handle = await world.double.slash(world.admin, world.channel, "settings", {"size_min": 2048})
    assert "Settings saved" not in (await handle.wait_followup()).content
    assert (await world.registry.settings.get(world.guild.id)).size_min == 256
    assert world.double.violations == []


async def test_lora_add_offers_unregistered_engine_files_and_fills_in_from_inspection(world: World) -> None:
    choices = await world.double.autocomplete(world.admin, world.channel, "lora", {"file": ""}, "file", subcommand="add")
    offered = [c["value"] for c in choices]
    assert "sd15/twin-kohya.safetensors" in offered
    assert "sd15/watercolor.safetensors" not in offered  # already registered
    assert len(choices) <= 25
    # Members see the /lora group, but not the engine's files nor the admin-only name lists.
    assert await world.double.autocomplete(world.alice, world.channel, "lora", {"file": ""}, "file", subcommand="add") == []
    assert await world.double.autocomplete(world.alice, world.channel, "model", {"file": ""}, "file", subcommand="add") == []
    assert await world.double.autocomplete(world.alice, world.channel, "lora", {"name": ""}, "name", subcommand="edit") == []
    assert await world.double.autocomplete(world.admin, world.channel, "lora", {"name": ""}, "name", subcommand="edit")
    # Typed in by hand anyway: refused, not registered a second time under another name.
    handle = await world.double.slash(
        world.admin, world.channel, "lora", {"file": "sd15/watercolor.safetensors", "name": "again"}, subcommand="add"
    )
    assert "registered here already" in (await handle.wait_followup()).content
    assert await world.registry.loras.get(world.guild.id, "again") is None

    handle = await world.double.slash(
        world.admin,
        world.channel,
        "lora",
        {"file": "sd15/twin-kohya.safetensors", "name": "twin", "category": "style"},
        subcommand="add",
    )
    assert await handle.wait_response(3) == 5
    card = await handle.wait_followup()
    assert card.ephemeral and card.embeds[0]["title"] == "LoRA · twin"
    entry = await world.registry.loras.get(world.guild.id, "twin")
    assert entry is not None and entry.architecture == "sd15" and entry.sha256 and len(entry.sha256) == 64
    assert [b.custom_id for b in card.buttons] == [
        f"atelier:lora:edit:{entry.id}", f"atelier:lora:remove:{entry.id}", f"atelier:lora:lookup:{entry.id}"
    ]

    # Edit from the card: a modal with the guesses, saved after the admin corrects them.
    click = await world.double.click(world.admin, card, f"atelier:lora:edit:{entry.id}")
    assert await click.wait_response(3) == 9
    submitted = await world.double.submit_modal(
        world.admin, click, {"trigger_words": "twin style, mirrored", "default_weight": "0.7", "weight_range": "0.5-0.9"}
    )
    assert await submitted.wait_response(3) == 5
    await submitted.wait_followup()
    entry = await world.registry.loras.get(world.guild.id, "twin")
    assert entry.trigger_words == ("twin style", "mirrored") and entry.default_weight == 0.7
    assert (entry.recommended_min, entry.recommended_max) == (0.5, 0.9)

    # Members cannot use the card's buttons.
    click = await world.double.click(world.alice, card, f"atelier:lora:remove:{entry.id}")
    await click.wait_response(3)
    assert "Manage Server" in click.response_payloads[-1]["data"]["content"]
    assert await world.registry.loras.get(world.guild.id, "twin") is not None
    assert world.double.violations == []


async def test_lora_autocomplete_follows_the_chosen_model_and_stays_within_25(world: World) -> None:
    sd15 = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": SD15, "lora1": ""}, "lora1")
    sdxl = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": SDXL, "lora2": "pix"}, "lora2")
    assert {c["value"] for c in sd15} == {"watercolor", "pixel-art", "captain-nova"}
    assert [c["value"] for c in sdxl] == ["pixel-art-xl"]

    await world.registry.loras.add_many(
        world.guild.id,
        [LoraEntry(name=f"style-{i:03d}", architecture="sd15", file=f"sd15/style-{i}.safetensors") for i in range(60)],
        world.admin.user.id,
    )
    many = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": SD15, "lora1": "sty"}, "lora1")
    assert len(many) == 25 and all(c["value"].startswith("style-") for c in many)
    assert all(len(c["name"]) <= 100 and len(c["value"]) <= 100 for c in many)
    models = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": "tiny"}, "model")
    assert {c["value"] for c in models} == {SD15, SDXL}
    assert world.double.violations == []


async def test_member_commands_answer_privately(world: World) -> None:
    async def run(name: str, options: dict, subcommand: str | None = None) -> str:
        handle = await world.double.slash(world.alice, world.channel, name, options, subcommand=subcommand)
        assert await handle.wait_response(3) == 5
        reply = await handle.wait_followup()
        assert reply.ephemeral
        return reply.content + " ".join(str(e) for e in reply.embeds)

    assert "captain nova" in await run("lora", {"name": "captain-nova"}, "info")
    assert "Did you mean `watercolor`" in await run("lora", {"name": "watercolour"}, "info")
    assert "watercolor" in await run("lora", {"query": "paint", "architecture": "sd15"}, "search")
    assert "Bookmarked" in await run("lora", {"name": "pixel-art"}, "bookmark")
    assert "pixel-art" in await run("lora", {}, "bookmarks")
    assert SDXL in await run("model", {}, "list")
    assert "sd15" in await run("model", {"name": SD15}, "info")
    assert "Nobody: `/imagine` starts right away" in await run("queue", {})
    assert world.double.violations == []


async def test_autocomplete_and_card_buttons_never_rebuild_the_catalog(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an admin change the catalog of a 100k-LoRA server takes most of a second to
    rebuild; autocomplete and a modal-opening click (which cannot defer) must not wait on it."""

    async def rebuild_refused(guild_id: int) -> None:
        raise AssertionError("registry.catalogs.get() called on an interaction that cannot wait")

    handle = await world.double.slash(
        world.admin, world.channel, "lora", {"file": "sd15/twin-kohya.safetensors", "name": "twin"}, subcommand="add"
    )
    card = await handle.wait_followup()
    entry = await world.registry.loras.get(world.guild.id, "twin")
    assert entry is not None

    monkeypatch.setattr(world.registry.catalogs, "get", rebuild_refused)
    chosen = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": SDXL, "lora1": ""}, "lora1")
    assert {c["value"] for c in chosen} == {"pixel-art-xl", "watercolor-xl"}
    # No model option: the server's default model (SD 1.5) decides the architecture.
    default = await world.double.autocomplete(world.alice, world.channel, "imagine", {"lora1": "tw"}, "lora1")
    assert [c["value"] for c in default] == ["twin"]
    models = await world.double.autocomplete(world.alice, world.channel, "imagine", {"model": ""}, "model")
    assert {c["value"] for c in models} == {SD15, SDXL}

    click = await world.double.click(world.admin, card, f"atelier:lora:edit:{entry.id}")
    assert await click.wait_response(3) == 9
    assert click.modal is not None and click.modal["custom_id"] == f"atelier:loraedit:{entry.id}"
    assert world.double.violations == []


async def test_lora_edit_sets_and_removes_the_card_preview(world: World) -> None:
    async def edit(options: dict) -> str:
        handle = await world.double.slash(world.admin, world.channel, "lora", {"name": "watercolor", **options}, subcommand="edit")
        reply = await handle.wait_followup()
        return reply.content + " ".join(str(e) for e in reply.embeds)

    assert "not an http(s) URL" in await edit({"preview": "javascript:alert(1)"})
    assert (await world.registry.loras.get(world.guild.id, "watercolor")).preview_url is None
    card = await edit({"preview": "https://example.org/watercolor.png"})
    assert "https://example.org/watercolor.png" in card  # the card's thumbnail
    assert (await world.registry.loras.get(world.guild.id, "watercolor")).preview_url == "https://example.org/watercolor.png"
    await edit({"preview": "none"})
    assert (await world.registry.loras.get(world.guild.id, "watercolor")).preview_url is None
    assert world.double.violations == []


async def test_refusals_quoting_a_long_typed_name_still_fit_one_message(world: World) -> None:
    long_name = "x" * 3000  # string options may be 6000 characters; a message only 2000
    for subcommand in ("edit", "remove"):
        options = {"name": long_name, "enabled": False} if subcommand == "edit" else {"name": long_name}
        handle = await world.double.slash(world.admin, world.channel, "lora", options, subcommand=subcommand)
        reply = await handle.wait_followup()
        assert reply.ephemeral and "No LoRA named" in reply.content and len(reply.content) <= 2000
    assert world.double.violations == []


async def test_card_edit_changes_only_what_the_admin_touched(world: World) -> None:
    description = "A long story. " * 430  # ~6000 characters: more than a modal input holds
    triggers = [f"trigger phrase number {i:02d} " + "x" * 36 for i in range(25)]  # ~1,500 characters
    handle = await world.double.slash(
        world.admin,
        world.channel,
        "lora",
        {"file": "sd15/twin-kohya.safetensors", "name": "storied", "description": description,
         "trigger_words": ", ".join(triggers)},
        subcommand="add",
    )  # fmt: skip
    card = await handle.wait_followup()
    entry = await world.registry.loras.get(world.guild.id, "storied")
    assert entry is not None and len(entry.description) > 4000 and len(entry.trigger_words) == 25

    click = await world.double.click(world.admin, card, f"atelier:lora:edit:{entry.id}")
    assert await click.wait_response(3) == 9, click.response_payloads
    submitted = await world.double.submit_modal(world.admin, click, {"default_weight": "0.6"})
    assert "Saved" in (await submitted.wait_followup()).content
    after = await world.registry.loras.get(world.guild.id, "storied")
    assert after.default_weight == 0.6
    assert after.description == entry.description and after.trigger_words == entry.trigger_words

    click = await world.double.click(world.admin, card, f"atelier:lora:edit:{entry.id}")
    await click.wait_response(3)
    submitted = await world.double.submit_modal(world.admin, click, {"description": "Short now."})
    await submitted.wait_followup()
    assert (await world.registry.loras.get(world.guild.id, "storied")).description == "Short now."
    assert world.double.violations == []


async def test_an_nsfw_lora_card_shows_its_preview_only_where_nsfw_is_allowed(world: World) -> None:
    entry = await world.registry.loras.get(world.guild.id, "captain-nova")
    assert entry is not None
    await world.registry.loras.update(
        world.guild.id, entry.name, world.admin.user.id, nsfw=True, preview_url="https://example.org/nova.png"
    )
    lounge = world.double.add_channel(world.guild, "lounge", nsfw=True)

    async def card(channel: object) -> dict:
        handle = await world.double.slash(world.alice, channel, "lora", {"name": "captain-nova"}, subcommand="info")
        (embed,) = (await handle.wait_followup()).embeds
        return embed

    here = await card(world.channel)
    assert "thumbnail" not in here and any(f["name"] == "NSFW" for f in here["fields"])
    assert (await card(lounge))["thumbnail"]["url"] == "https://example.org/nova.png"
    assert world.double.violations == []


async def test_add_refuses_a_file_of_the_other_kind_and_says_which_command_to_use(world: World, demo_assets) -> None:
    import shutil

    stray_lora = demo_assets.model_root / "stray-lora.safetensors"
    stray_model = demo_assets.lora_root / "stray-model.safetensors"
    shutil.copyfile(demo_assets.lora_root / "sd15/pixel-art.safetensors", stray_lora)
    shutil.copyfile(demo_assets.model_root / demo_assets.models["sd15"], stray_model)
    try:
        handle = await world.double.slash(
            world.admin, world.channel, "model", {"file": stray_lora.name}, subcommand="add"
        )
        assert "is a LoRA, not a base model, so /model add cannot take it: register it with `/lora add`" in (await handle.wait_followup(within=30)).content
        handle = await world.double.slash(
            world.admin, world.channel, "lora", {"file": stray_model.name}, subcommand="add"
        )
        assert "is a full model (checkpoint), not a LoRA, so /lora add cannot take it: register it with `/model add`" in (await handle.wait_followup(within=30)).content
        assert await world.registry.models.get(world.guild.id, "stray-lora") is None
        assert await world.registry.loras.get(world.guild.id, "stray-model") is None
    finally:
        stray_lora.unlink()
        stray_model.unlink()
