"""The operator's side, through the Discord double and the real engine: allowed servers, file
shares, command sync on change, result mentions, the image check and the prompt blocklist,
data deleted after the bot leaves a server, and /privacy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.operator.guild_lifecycle import DAY_S
from bot.operator.safety import ImageSafety, Verdict
from bot.registry import Registry
from engine.client import EngineClient
from sandbox.discord_double import MANAGE_GUILD, DiscordDouble, run_bot
from tests.bot.conftest import FAST, SD15, SDXL, World, make_bot, seed_registry
from tests.bot.test_admin_registry import answer
from tests.bot.test_imagine_flow import imagine_and_wait, is_result
from tests.conftest import ENGINE_TOKEN


@contextlib.asynccontextmanager
async def studio(
    engine_url: str, demo_assets: Any, db_path: Path, double: DiscordDouble | None = None, **bot_options: Any
) -> AsyncIterator[World]:
    """Like the ``world`` fixture, with the bot built from ``bot_options`` (and a reusable DB)."""
    async with contextlib.AsyncExitStack() as stack:
        if double is None:
            double = await stack.enter_async_context(DiscordDouble())
        guild = double.guilds[0] if double.guilds else double.add_guild("Studio")
        channel = guild.channels[0] if guild.channels else double.add_channel(guild, "studio")
        members = {m.user.name: m for m in guild.members.values()}
        alice = members.get("alice") or double.add_member(guild, "alice")
        bob = members.get("bob") or double.add_member(guild, "bob")
        admin = members.get("admin") or double.add_member(guild, "admin", permissions=MANAGE_GUILD)
        registry = await Registry.open(db_path)
        stack.push_async_callback(registry.close)
        engine = EngineClient(engine_url, token=ENGINE_TOKEN)
        stack.push_async_callback(engine.close)
        if not await registry.models.all(guild.id):
            await seed_registry(registry, guild.id, engine, demo_assets, admin.user.id)
        bot = make_bot(registry, engine, **bot_options)
        await stack.enter_async_context(run_bot(bot, double))
        yield World(double, guild, channel, alice, bob, admin, admin, registry, engine, bot, db_path, engine_url)


class FlagEverything:
    """A stand-in classifier that flags every image.

    Only here, where the real classifier would have to be shown explicit images, which this
    repository does not ship; ``test_nudenet_runs_on_a_real_result`` runs the real NudeNet.
    """

    name = "stand-in"

    def __init__(self) -> None:
        self.seen = 0

    def classify(self, image: bytes) -> Verdict:
        assert image.startswith(b"\x89PNG")
        self.seen += 1
        return Verdict(True, ("FEMALE_BREAST_EXPOSED",), 0.9)


async def test_servers_off_the_allowlist_get_a_polite_refusal_and_no_files(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        home = double.add_guild("Studio")
        double.add_channel(home, "studio")
        stranger = double.add_guild("Strangers")
        hall = double.add_channel(stranger, "hall")
        outsider = double.add_member(stranger, "outsider", permissions=MANAGE_GUILD)
        async with studio(engine_url, demo_assets, tmp_path / "a.sqlite3", double, allowed_guilds=(home.id,)) as world:
            handle = await double.slash(outsider, hall, "model", {}, subcommand="list")
            text = await answer(handle)
            assert "not enabled for this server" in text and str(stranger.id) in text
            for command, option in (("lora", "file"), ("model", "file")):
                offered = await double.autocomplete(outsider, hall, command, {option: ""}, option, subcommand="add")
                assert offered == []
            handle = await double.slash(outsider, hall, "lora", {"file": "sd15/twin-kohya.safetensors"}, subcommand="add")
            assert "not enabled" in await answer(handle)
            assert await world.registry.models.all(stranger.id) == []
            handle = await double.slash(outsider, hall, "imagine", {**FAST, "prompt": "x"})
            assert "not enabled" in await answer(handle)
            # The allowed server works as before.
            result = await imagine_and_wait(world, world.alice, {"prompt": "a lamp"})
            assert result.attachments

            # With leave_other_guilds, a new invitation gets a note in its system channel and a goodbye.
            world.bot.lifecycle.leave_other_guilds = True
            crashers = double.add_guild("Crashers", channels=["lobby"])
            (lobby,) = crashers.channels
            for _ in range(100):
                if crashers in double.left_guilds:
                    break
                await asyncio.sleep(0.05)
            assert crashers in double.left_guilds and home not in double.left_guilds
            (note,) = double.messages(lobby)
            assert "private installation" in note.content and str(crashers.id) in note.content
            assert double.requests_matching("DELETE /users/@me/guilds/*")
            assert double.violations == []


async def test_a_server_sees_only_the_files_shared_with_it(engine_url: str, demo_assets: Any, tmp_path: Path) -> None:
    async with DiscordDouble() as double:
        guild = double.add_guild("Studio")
        shares = {str(guild.id): ("lora:sd15/", "model:sd15-tiny.safetensors"), "*": ()}
        async with studio(engine_url, demo_assets, tmp_path / "a.sqlite3", double, shares=shares) as world:
            loras = await double.autocomplete(world.admin, world.channel, "lora", {"file": ""}, "file", subcommand="add")
            offered = {c["value"] for c in loras}
            assert "sd15/twin-kohya.safetensors" in offered
            assert not any(path.startswith("sdxl/") for path in offered)
            models = await double.autocomplete(world.admin, world.channel, "model", {"file": ""}, "file", subcommand="add")
            assert models == []  # its one shared model is registered already

            # Typed by hand: refused before the engine is asked, in the words used for a missing file.
            handle = await double.slash(
                world.admin, world.channel, "lora", {"file": "sdxl/twin-kohya.safetensors"}, subcommand="add"
            )
            assert "not among the files this server may use" in await answer(handle)
            handle = await double.slash(world.admin, world.channel, "lora", {"file": "sd15/twin-kohya.safetensors"}, subcommand="add")
            assert "Registered **twin-kohya**" in await answer(handle)

            # Registered before the share narrowed: refused at /imagine instead of reading the file.
            handle = await double.slash(world.alice, world.channel, "imagine", {"prompt": "a tower", "model": SDXL})
            refusal = await answer(handle)
            assert "no longer shares with this server" in refusal and SDXL in refusal
            assert not [m for m in double.messages(world.channel) if is_result(m)]
            # A member sees the model's hash, not where its file lies.
            card = await answer(await double.slash(world.alice, world.channel, "model", {"name": SD15}, subcommand="info"))
            assert "AutoV2" in card and "safetensors" not in card
            card = await answer(await double.slash(world.admin, world.channel, "model", {"name": SD15}, subcommand="info"))
            assert "sd15-tiny.safetensors" in card


async def test_a_restart_with_unchanged_commands_does_not_sync(engine_url: str, demo_assets: Any, tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite3"
    async with DiscordDouble() as double:
        sync_calls = "PUT /applications/*/commands"
        async with studio(engine_url, demo_assets, db, double):
            assert len(double.requests_matching(sync_calls)) == 1
            assert double.registered_commands()
        async with studio(engine_url, demo_assets, db, double) as world:
            assert len(double.requests_matching(sync_calls)) == 1  # same tree: no call at all
            handle = await double.slash(world.alice, world.channel, "lora", {}, subcommand="bookmarks")
            assert await handle.wait_response(3) == 5  # the commands Discord holds still work
        async with studio(engine_url, demo_assets, db, double, force_sync=True):
            assert len(double.requests_matching(sync_calls)) == 2  # --sync
        # A tree that differs from the one last synced (here: an older release's) syncs by itself.
        async with await Registry.open(db) as registry:
            await registry.sync_state.record("global", double.application_id, "hash-of-an-older-tree")
        async with studio(engine_url, demo_assets, db, double):
            assert len(double.requests_matching(sync_calls)) == 3
        async with studio(engine_url, demo_assets, db, double):
            assert len(double.requests_matching(sync_calls)) == 3
        assert double.violations == []


async def test_results_mention_only_the_requester(world: World) -> None:
    await imagine_and_wait(world, world.alice, {"prompt": "@everyone look <@&123456789012345678>"})
    (post,) = [r for r in world.double.requests_matching("POST /channels/*/messages") if r.files]
    mentions = post.payload["allowed_mentions"]  # type: ignore[index]
    # Was {"users": [id], "parse": ["everyone", "roles"]}: now nothing is parsed from the text.
    assert mentions == {"users": [world.alice.user.id], "parse": []}
    # Status messages (the private reply and its edits) echo the prompt too, and ping nobody.
    statuses = [r for r in world.double.requests_matching("* /webhooks/*") if r.payload and "content" in r.payload]
    assert statuses and all(r.payload["allowed_mentions"]["parse"] == [] for r in statuses)  # type: ignore[index]


async def test_flagged_images_are_withheld_in_sfw_channels_and_posted_in_nsfw_ones(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    classifier = FlagEverything()
    async with studio(engine_url, demo_assets, tmp_path / "a.sqlite3", safety=ImageSafety(classifier)) as world:
        result_filter = lambda m: not m.ephemeral and "Seed" in str(m.embeds)  # noqa: E731
        handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "a beach", "count": 2})
        assert await handle.wait_response(3) == 5
        post = await world.double.wait_for_message(world.channel, result_filter, within=90)
        assert post.attachments == [] and f"<@{world.alice.user.id}>" in post.content
        notes = str(post.embeds)
        assert "2 of 2 images were not posted" in notes and "not an age-restricted channel" in notes
        assert classifier.seen == 2

        nsfw = world.double.add_channel(world.guild, "after-dark", nsfw=True)
        handle = await world.double.slash(world.alice, nsfw, "imagine", {**FAST, "prompt": "a beach"})
        assert await handle.wait_response(3) == 5
        shown = await world.double.wait_for_message(nsfw, is_result, within=90)
        assert len(shown.attachments) == 1 and "not posted" not in str(shown.embeds)
        assert classifier.seen == 2  # not even looked at where NSFW is allowed

        await world.registry.settings.update(world.guild.id, world.admin.user.id, image_check="spoiler")
        before = {m.id for m in world.double.messages(world.channel)}
        handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "a beach"})
        assert await handle.wait_response(3) == 5
        covered = await world.double.wait_for_message(world.channel, lambda m: is_result(m) and m.id not in before, within=90)
        assert covered.attachments[0].filename.startswith("SPOILER_") and "spoiler" in str(covered.embeds)

        text = await answer(await world.double.slash(world.admin, world.channel, "settings", {}))
        assert "Image check: spoiler (stand-in)" in text


async def test_the_prompt_blocklist_refuses_before_any_gpu_time(world: World) -> None:
    text = await answer(
        await world.double.slash(world.admin, world.channel, "settings", {"blocklist": "gore, blood bath, nud*"})
    )
    assert "Settings saved" in text and "`nud*`" in text
    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "a NUDE statue, Blood  Bath"})
    refusal = await answer(handle)
    assert "`blood bath`" in refusal and "`nud*`" in refusal and "`gore`" not in refusal
    assert world.bot.dispatcher.jobs == {}
    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "a gorgeous statue"})
    assert "Queued" in await answer(handle)


async def test_leaving_a_server_deletes_its_data_after_the_grace_period(
    engine_url: str, demo_assets: Any, tmp_path: Path
) -> None:
    async with DiscordDouble() as double:
        double.add_guild("Studio")
        kept = double.add_guild("Kept")
        async with studio(
            engine_url, demo_assets, tmp_path / "a.sqlite3", double, data_grace_days=0.6 / DAY_S, purge_interval_s=0.1
        ) as world:
            other = world.guild
            await world.registry.saved_recipes.save(other.id, world.alice.user.id, "r", {"model": "m", "prompt": "p"})
            await world.registry.models.add(kept.id, (await world.registry.models.all(other.id))[0], world.admin.user.id)
            double.remove_bot(other)
            for _ in range(50):
                if other.id in await world.registry.privacy.departures():
                    break
                await asyncio.sleep(0.02)
            assert other.id in await world.registry.privacy.departures()
            assert await world.registry.models.all(other.id)  # within the grace period: all kept
            await asyncio.sleep(1.0)
            assert await world.registry.models.all(other.id) == []
            assert await world.registry.saved_recipes.of_member(other.id, world.alice.user.id) == []
            assert await world.registry.audit.entries(other.id) == []
            assert await world.registry.loras.count(other.id) == 0
            assert other.id not in await world.registry.privacy.departures()
            assert await world.registry.models.all(kept.id)  # the server the bot is still in


async def test_privacy_shows_and_deletes_a_members_data(world: World) -> None:
    result = await imagine_and_wait(world, world.alice, {"prompt": "a fox"})
    await world.registry.saved_recipes.save(world.guild.id, world.alice.user.id, "fox", {"model": "m", "prompt": "p"})
    await world.registry.loras.bookmark(world.guild.id, world.alice.user.id, "watercolor")
    await world.registry.loras.bookmark(world.guild.id, world.bob.user.id, "watercolor")
    text = await answer(await world.double.slash(world.alice, world.channel, "privacy", {}, subcommand="show"))
    assert "Saved recipes (1)" in text and "**fox**" in text and "Images made for you (1)" in text
    assert f"/{result.id})" in text and "Bookmarked LoRAs: 1" in text

    handle = await world.double.slash(world.alice, world.channel, "privacy", {"images": True}, subcommand="delete")
    confirm = await handle.wait_followup()
    assert "cannot be undone" in confirm.content
    (button,) = confirm.buttons
    assert await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id)  # nothing yet
    refused = await world.double.click(world.bob, confirm, button.custom_id)
    assert "another member's data" in await answer(refused)
    assert await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id)
    done = await answer(await world.double.click(world.alice, confirm, button.custom_id))
    assert "1 saved recipe(s), 0 recipe book entries, 0 card record(s), 1 image record(s), 1 bookmark(s)" in done and "1 image message(s) deleted" in done
    assert world.double.message_by_id(result.id).deleted  # type: ignore[union-attr]
    data = await world.registry.privacy.member_data(world.guild.id, world.alice.user.id)
    assert data.empty
    assert (await world.registry.privacy.member_data(world.guild.id, world.bob.user.id)).bookmarks == 1
    assert world.double.violations == []


async def test_bot_owners_administer_every_allowed_server(engine_url: str, demo_assets: Any, tmp_path: Path) -> None:
    async with studio(engine_url, demo_assets, tmp_path / "a.sqlite3") as world:
        owner = world.double.app_owner  # the application's owner, read from Discord at login
        assert world.bot.access.is_owner(owner.id)
        member = world.double.add_member(world.guild, "owner-here", user=owner)
        text = await answer(await world.double.slash(member, world.channel, "model", {"name": SD15}, subcommand="disable"))
        assert "disabled" in text
        assert not (await world.registry.models.get(world.guild.id, SD15)).enabled  # type: ignore[union-attr]
