"""Pure pieces of the bot: Discord limits, recipe text, config, file fitting, command shapes."""

from __future__ import annotations

import io
from pathlib import Path

import discord
import pytest
from discord import app_commands
from PIL import Image, PngImagePlugin

from bot.jobs import fit_files
from bot.operator.config import BotConfig, ConfigError
from bot.recipes.text import imagine_command, recipe_reply, suggest_name
from bot.registry import Category, LoraEntry
from bot.registry.text import clean_name
from bot.ui import embeds, views
from bot.ui.actions import parse_lora_lines
from bot.ui.lora_cards import lora_changes
from engine.protocol import LoraRef, Recipe
from engine.recipe.a1111 import parse_parameters as parse_a1111_parameters
from engine.recipe.a1111 import write_parameters as a1111_parameters


def recipe(**changes) -> Recipe:
    values = dict(
        model="sd15-tiny.safetensors",
        model_name="tiny-sd15",
        prompt="a lighthouse, dusk",
        negative_prompt="blurry",
        loras=(LoraRef("sd15/a.safetensors", 0.8, "alpha", "ab" * 32), LoraRef("sd15/b.safetensors", -0.5, "beta")),
        sampler="DPM++ 2M Karras",
        steps=20,
        cfg_scale=6.5,
        seed=42,
        width=512,
        height=768,
    )
    values.update(changes)
    return Recipe(**values)


def test_recipe_embed_stays_within_every_limit_with_huge_inputs() -> None:
    many = tuple(LoraRef(f"l/{i}.safetensors", 0.5, "x" * 90 + str(i)) for i in range(100))
    embed = embeds.recipe_embed(
        recipe(prompt="p" * 10_000, negative_prompt="n" * 10_000, loras=many),
        requester="u" * 3000,
        seconds=3.25,
        notes=["note " * 500] * 30,
    )
    assert len(embed) <= embeds.EMBED_TOTAL_LIMIT
    assert len(embed.title or "") <= embeds.TITLE_LIMIT
    assert len(embed.description or "") <= embeds.DESCRIPTION_LIMIT
    assert len(embed.fields) <= embeds.FIELD_COUNT_LIMIT
    assert all(len(f.value or "") <= embeds.FIELD_VALUE_LIMIT for f in embed.fields)
    assert len(embed.footer.text or "") <= embeds.FOOTER_LIMIT
    # The short, important fields survive the trimming.
    names = [f.name for f in embed.fields]
    assert names[:6] == ["Model", "Seed", "Size", "Sampler", "Steps", "CFG"]


def test_recipe_embed_shows_the_whole_recipe() -> None:
    embed = embeds.recipe_embed(recipe(), requester="alice", seconds=1.5)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Model"] == "tiny-sd15" and fields["Seed"] == "42" and fields["Size"] == "512×768"
    assert fields["CFG"] == "6.5" and fields["Sampler"] == "DPM++ 2M Karras" and fields["Steps"] == "20"
    assert fields["LoRAs (2)"] == "`alpha` × 0.8\n`beta` × -0.5"
    assert "1.5 s" in (embed.footer.text or "") and "alice" in (embed.footer.text or "")


def test_lora_card_and_lists_fit() -> None:
    entry = LoraEntry(
        name="n" * 100, architecture="sd15", file="x.safetensors", category=Category.STYLE,
        trigger_words=tuple("w" * 50 for _ in range(40)), description="d" * 10_000,
    )  # fmt: skip
    card = embeds.lora_card(entry, bookmarked=True)
    assert len(card) <= embeds.EMBED_TOTAL_LIMIT
    assert all(len(f.value or "") <= embeds.FIELD_VALUE_LIMIT for f in card.fields)
    listing = embeds.list_embed("t", ["line " * 50] * 200)
    assert len(listing) <= embeds.EMBED_TOTAL_LIMIT


def test_problems_message_lists_every_problem_in_one_message() -> None:
    from bot.request.validation import Problem

    problems = [
        Problem("unknown_lora", f"There is no LoRA named `x{i}`.", "Pick one from the list.", ("alpha", "beta"))
        for i in range(3)
    ]
    text = embeds.problems_message(problems)
    assert text.count("did you mean `alpha`, `beta`?") == 3
    assert "`x0`" in text and "`x2`" in text and text.count("Pick one") == 3
    huge = embeds.problems_message([Problem("p", "m" * 1500, "f" * 1500)] * 5)
    assert len(huge) <= embeds.CONTENT_LIMIT


def test_a1111_parameters_round_trip_through_the_engine_reader() -> None:
    text = a1111_parameters(recipe(prompt="a cat, sitting: calmly"))
    parsed = parse_a1111_parameters(text)
    assert parsed.prompt == "a cat, sitting: calmly <lora:alpha:0.8> <lora:beta:-0.5>"
    assert parsed.negative_prompt == "blurry"
    assert parsed.params["Seed"] == "42" and parsed.params["Sampler"] == "DPM++ 2M"
    assert parsed.params["Schedule type"] == "Karras" and parsed.params["Size"] == "512x768"
    assert "Lora hashes" not in parsed.params  # the LoRAs carry no A1111 hash: none is invented


def test_imagine_command_uses_three_slots_then_inline_tags() -> None:
    loras = tuple(LoraRef(f"{n}.safetensors", 0.5 + i / 10, n) for i, n in enumerate("abcde"))
    line = imagine_command(recipe(loras=loras, prompt="two\nlines"))
    assert line.startswith("/imagine prompt:two lines <lora:d:0.8> <lora:e:0.9> model:tiny-sd15 ")
    assert "lora1:a weight1:0.5 lora2:b weight2:0.6 lora3:c weight3:0.7" in line
    assert "seed:42" in line and "size:512x768" in line and "\n" not in line


def test_recipe_reply_fits_one_message_or_comes_whole_as_a_file() -> None:
    text, attachment = recipe_reply(recipe())
    assert len(text) <= 2000 and attachment is None and "/imagine recipe:AT1." in text
    long = recipe(prompt="word " * 800 + "end")
    text, attachment = recipe_reply(long)
    assert len(text) <= 2000 and attachment is not None
    assert imagine_command(long) in attachment and a1111_parameters(long) in attachment  # nothing cut


def test_suggested_recipe_names_are_always_valid() -> None:
    for prompt in ("(masterpiece:1.2), a <very> long prompt " * 5, "x" * 60, "", "::::", "a cat"):
        for seed in (7, 4294967295):
            name = suggest_name(recipe(prompt=prompt, seed=seed))
            assert clean_name(name, what="recipe name") == name and name.endswith(f"#{seed}")


def test_custom_ids_fit_and_match_their_templates() -> None:
    ids = [b.custom_id for b in views.result_view().children]  # type: ignore[attr-defined]
    ids += [b.custom_id for b in views.status_view("f" * 32).children]  # type: ignore[attr-defined]
    ids += [b.custom_id for b in views.lora_card_view(2**63 - 1).children]  # type: ignore[attr-defined]
    ids += [b.custom_id for b in views.card_view(2**63 - 1, shareable=True).children]  # type: ignore[attr-defined]
    ids += [b.custom_id for b in views.civitai_apply_view(2**63 - 1, 10**12 - 1).children]  # type: ignore[attr-defined]
    assert len(ids) == 6 + 3 + 1 + 3 + 5 + 1  # result: 6 image buttons + 3 picture buttons (issue 20)
    assert all(any(item.__discord_ui_compiled_template__.fullmatch(i) for item in views.DYNAMIC_ITEMS) for i in ids)
    assert all(0 < len(i) <= views.CUSTOM_ID_LIMIT for i in ids)
    modal = views.RemixModal(message_id=2**63, prompt="p" * 9000, negative="", loras="a:1", seed="1", steps="2")
    assert len(modal.children) <= 5 and len(modal.title) <= 45
    assert len(modal.custom_id) <= 100
    assert all(len(item.default or "") <= 4000 for item in modal.children)  # type: ignore[attr-defined]
    for kind in ("remixcard", "savepost", "savecard"):
        save = views.SaveRecipeModal(kind=kind, target=2**63, name="n", scope="me")
        assert views.parse_modal_submit({"custom_id": save.custom_id, "components": []}) == (kind, 2**63, {})


def test_modal_submits_are_read_from_their_payload_in_both_layouts() -> None:
    modal = views.RemixModal(message_id=2**63, prompt="p", negative="", loras="a:1", seed="1", steps="2")
    assert views.MODAL_ID.fullmatch(modal.custom_id)
    rows = {"custom_id": modal.custom_id, "components": [
        {"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "a fox"}]},
        {"type": 1, "components": [{"type": 4, "custom_id": "seed", "value": ""}]},
    ]}  # fmt: skip
    assert views.parse_modal_submit(rows) == ("remix", 2**63, {"prompt": "a fox", "seed": ""})
    labels = {"custom_id": "atelier:loraedit:42", "components": [
        {"type": 18, "component": {"type": 4, "custom_id": "category", "value": "style"}},
    ]}  # fmt: skip
    assert views.parse_modal_submit(labels) == ("loraedit", 42, {"category": "style"})
    assert views.parse_modal_submit({"custom_id": "someone-else:remix:1", "components": []}) is None
    assert views.parse_modal_submit({"custom_id": "atelier:remix:1:extra", "components": []}) is None


def test_parse_lora_lines_and_admin_edits() -> None:
    assert parse_lora_lines("alpha:0.7\n\n <lora:beta:-1>\ngamma\nname:with:colon:0.2") == [
        ("alpha", "0.7"), ("beta", "-1"), ("gamma", None), ("name:with:colon", "0.2"),
    ]  # fmt: skip
    changes, problems = lora_changes(
        trigger_words="a, b ,", default_weight="0.8", weight_range="0.4-1.1", category="Style", description="x"
    )
    assert problems == []
    assert changes == {
        "trigger_words": ("a", "b"), "default_weight": 0.8, "recommended_min": 0.4, "recommended_max": 1.1,
        "category": Category.STYLE, "description": "x",
    }  # fmt: skip
    _, problems = lora_changes(default_weight="heavy", weight_range="1", category="hats")
    assert len(problems) == 3


def _png(side: int, noise: bool = True) -> bytes:
    import os

    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)) if noise else Image.new("RGB", (side, side))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2, Seed: 5, Size: 8x8")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_fit_files_scales_oversize_images_and_keeps_their_recipe() -> None:
    small, big = _png(64), _png(512)
    fitted, notes = fit_files([small, big], file_limit=len(big) // 2)
    assert fitted[0] == small and len(fitted[1]) <= len(big) // 2
    assert "scaled down" in notes[0]
    with Image.open(io.BytesIO(fitted[1])) as image:
        assert image.text["parameters"].startswith("a cat")  # type: ignore[attr-defined]
        assert image.size[0] < 512
    fitted, notes = fit_files([big], file_limit=100)
    assert fitted == [] and "not posted" in notes[0]


def test_config_from_env_and_toml(tmp_path: Path) -> None:
    config_file = tmp_path / "atelier.toml"
    config_file.write_text('[atelier]\ndata_dir = "/srv/atelier"\nengine_port = 9000\nsync_guilds = [1, 2]\n')
    config = BotConfig.load(env={"DISCORD_TOKEN": "t", "ATELIER_ENGINE_PORT": "9100"}, config_file=config_file)
    assert config.token == "t" and config.engine_port == 9100  # the environment wins
    assert config.data_dir == Path("/srv/atelier") and config.sync_guilds == (1, 2)
    assert config.database_path == Path("/srv/atelier/atelier.sqlite3")
    assert BotConfig.load(env={}).data_dir == Path("var")
    assert BotConfig.load(env={"ATELIER_SYNC_GUILDS": "5, 6"}).sync_guilds == (5, 6)
    assert BotConfig.load(env={}).stall_limit == 900.0
    assert BotConfig.load(env={"ATELIER_STALL_LIMIT": "1800"}).stall_limit == 1800.0
    with pytest.raises(ConfigError, match="ATELIER_ENGINE_PORT"):
        BotConfig.load(env={"ATELIER_ENGINE_PORT": "many"})
    config_file.write_text("tokn = 'typo'\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        BotConfig.load(env={}, config_file=config_file)


def test_command_definitions_respect_discord_limits() -> None:
    from bot.ui.cogs import register_all

    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)
    register_all(tree)
    payloads = [command.to_dict(tree) for command in tree.get_commands()]
    assert sorted(p["name"] for p in payloads) == [
        "Edit this image", "Remix this image", "Use as starting image", "audit", "edit", "embedding", "imagine", "lora",
        "model", "privacy", "queue", "recipe", "settings",
    ]  # fmt: skip
    menus = [p for p in payloads if p.get("type") == 3]
    # The second and third: issue 20 (Discord allows 5 message menus).
    assert [m["name"] for m in menus] == ["Remix this image", "Use as starting image", "Edit this image"]
    assert not any(m.get("description") for m in menus)
    payloads = [p for p in payloads if p.get("type", 1) == 1]

    def walk(options):
        for option in options:
            assert 1 <= len(option["name"]) <= 32 and 1 <= len(option["description"]) <= 100
            assert len(option.get("choices") or []) <= 25
            yield option
            yield from walk(option.get("options") or [])

    for payload in payloads:
        assert 1 <= len(payload["description"]) <= 100
        assert len(payload.get("options") or []) <= 25
        list(walk(payload.get("options") or []))
    by_name = {p["name"]: p for p in payloads}
    imagine = {o["name"]: o for o in by_name["imagine"]["options"]}
    assert all(imagine[f"weight{i}"]["type"] == 3 for i in (1, 2, 3))  # strings, for clear errors
    assert all(imagine[f"lora{i}"]["autocomplete"] for i in (1, 2, 3)) and imagine["model"]["autocomplete"]
    assert (imagine["count"]["min_value"], imagine["count"]["max_value"]) == (1, 4)
    assert int(by_name["settings"]["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
    assert all(p.get("dm_permission") is False or p.get("contexts") == [0] for p in payloads)


async def test_the_configured_stall_limit_reaches_the_dispatcher() -> None:
    from bot.assembly import build_bot
    from engine.client import EngineClient

    async with EngineClient("http://127.0.0.1:9") as engine:
        config = BotConfig(stall_limit=1800.0, image_classifier="off")
        bot = build_bot(config, registry=None, engines=[engine])
        assert bot.dispatcher.stall_limit == 1800.0


def test_engine_addresses_and_queue_settings_from_the_environment() -> None:
    config = BotConfig.load(env={"ATELIER_ENGINE_URLS": "http://gpu1:7861, http://gpu2:7861/", "ATELIER_ENGINE_DEPTH": "3"})
    assert config.engine_urls == ("http://gpu1:7861", "http://gpu2:7861/")
    assert config.external_engines == ("http://gpu1:7861", "http://gpu2:7861")
    assert config.engine_depth == 3 and config.engine_batch == 4 and config.max_pending == 2000
    one = BotConfig.load(env={"ATELIER_ENGINE_URL": "http://gpu1:7861", "ATELIER_ENGINE_URLS": "http://gpu1:7861"})
    assert one.external_engines == ("http://gpu1:7861",)  # the one-engine form and the list agree
    assert BotConfig.load(env={}).external_engines == ()  # none: the bot starts its own
    with pytest.raises(ConfigError, match="ATELIER_ENGINE_URLS"):
        BotConfig.load(env={"ATELIER_ENGINE_URLS": "gpu1:7861"})
    with pytest.raises(ConfigError, match="server_share"):
        BotConfig.load(env={"ATELIER_SERVER_SHARE": "1.5"})
    with pytest.raises(ConfigError, match="engine_depth"):
        BotConfig.load(env={"ATELIER_ENGINE_DEPTH": "0"})


def test_server_queue_settings_round_trip_and_are_checked() -> None:
    from bot.registry import RegistryError, ServerSettings
    from bot.registry.checks import clean_settings

    settings = ServerSettings(priority_roles=(5, 3), active_jobs_per_user=1, server_queue_limit=50)
    again = ServerSettings.from_json(settings.to_json())
    assert again.priority_roles == (5, 3) and again.active_jobs_per_user == 1 and again.server_queue_limit == 50
    assert clean_settings(settings).priority_roles == (3, 5)
    assert ServerSettings.from_json({}).server_queue_limit == 200  # old rows load with defaults
    with pytest.raises(RegistryError, match="server queue limit"):
        clean_settings(ServerSettings(server_queue_limit=0))


def test_status_text_rounds_far_positions_so_a_long_queue_is_edited_rarely() -> None:
    from bot.jobs import Job
    from bot.jobs.status import describe_eta, describe_position, status_text

    assert describe_position(0) == "you are next" and describe_position(3) == "**3** ahead of you"
    assert describe_position(243) == describe_position(180) == "about **200** ahead of you"
    assert describe_position(7) == "about **10** ahead of you" and describe_position(5) == "**5** ahead of you"
    assert describe_eta(30) == "starts in under a minute" and describe_eta(125) == "starts in about 2 min"
    job = Job(recipe=recipe(), guild_id=1, channel_id=2, user_id=3, user_name="u")
    job.position, job.eta_s = 243, 1800
    text = status_text(job)
    assert "about **200** ahead" in text and "30 min" in text and "posted in this channel" in text
    assert "restarting" in status_text(job, engines_down=True)
