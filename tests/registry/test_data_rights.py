"""What the registry keeps about a member or a server, deleting it, and the operator's rules."""

from __future__ import annotations

import pytest

from bot.operator.access import AccessPolicy
from bot.operator.config import BotConfig, ConfigError
from bot.registry import Registry
from engine.protocol import LoraRef, Recipe
from tests.registry.conftest import ADMIN, GUILD, OTHER_GUILD, lora, model

ALICE, BOB = 501, 502


async def _fill(registry: Registry, guild: int) -> None:
    await registry.models.add(guild, model("base"), ADMIN)
    await registry.loras.add(guild, lora("ink"), ADMIN)
    await registry.settings.update(guild, ADMIN, max_loras=4)
    await registry.loras.bookmark(guild, ALICE, "ink")
    await registry.loras.bookmark(guild, BOB, "ink")
    await registry.saved_recipes.save(guild, ALICE, "mine", {"model": "base.safetensors", "model_name": "base", "prompt": "p"})
    await registry.posts.record(guild, 10, 900 + guild, ALICE, {"model": "m", "prompt": "p"})
    await registry.loras.update(guild, "ink", ALICE, description="edited by alice")


async def test_a_member_sees_and_deletes_only_their_own_data(registry: Registry) -> None:
    await _fill(registry, GUILD)
    await _fill(registry, OTHER_GUILD)
    data = await registry.privacy.member_data(GUILD, ALICE)
    assert (data.saved_recipes, data.posts, data.bookmarks, data.audit_entries) == (("mine",), ((10, 900 + GUILD),), 1, 1)
    done = await registry.privacy.delete_member_data(GUILD, ALICE)
    assert (done.saved_recipes, done.posts, done.bookmarks, done.audit_entries) == (1, ((10, 900 + GUILD),), 1, 1)
    assert (await registry.privacy.member_data(GUILD, ALICE)).empty
    # The change alice made stays in the log, by "a former member" (actor 0).
    assert [e.actor_id for e in await registry.audit.entries(GUILD) if e.action == "lora.update"] == [0]
    assert (await registry.privacy.member_data(GUILD, BOB)).bookmarks == 1
    assert not (await registry.privacy.member_data(OTHER_GUILD, ALICE)).empty  # another server


async def test_a_departed_server_is_deleted_after_the_grace_period_and_only_it(registry: Registry) -> None:
    await _fill(registry, GUILD)
    await _fill(registry, OTHER_GUILD)
    await registry.catalogs.get(GUILD)  # cached: must not survive the purge
    assert await registry.privacy.known_guilds() == {GUILD, OTHER_GUILD}
    await registry.privacy.record_departure(GUILD, at=1000.0)
    await registry.privacy.record_departure(GUILD, at=5000.0)  # a restart does not extend it
    assert await registry.privacy.departures() == {GUILD: 1000.0}
    assert await registry.purge_departed(grace_s=100, now=1050.0) == []
    assert await registry.purge_departed(grace_s=100, now=1101.0) == [GUILD]
    assert await registry.models.all(GUILD) == [] and await registry.loras.count(GUILD) == 0
    assert await registry.loras.search(GUILD, "ink") == []  # the full-text index follows
    assert (await registry.catalogs.get(GUILD)).models == {}
    assert await registry.audit.entries(GUILD) == [] and await registry.privacy.departures() == {}
    assert await registry.models.all(OTHER_GUILD) and await registry.loras.search(OTHER_GUILD, "ink")
    # Re-invited within the grace period: the departure is cancelled, nothing deleted.
    await registry.privacy.record_departure(OTHER_GUILD, at=1000.0)
    assert await registry.privacy.cancel_departure(OTHER_GUILD)
    assert await registry.purge_departed(grace_s=0, now=10_000.0) == []


async def test_recipes_using_an_entry_by_name_or_file(registry: Registry) -> None:
    base = await registry.models.add(GUILD, model("base"), ADMIN)
    ink = await registry.loras.add(GUILD, lora("ink"), ADMIN)
    with_ink = Recipe(model=base.file, model_name="Base", prompt="p", loras=(LoraRef(ink.file, 0.5, "INK"),))
    await registry.saved_recipes.save(GUILD, ALICE, "a", with_ink.to_json())
    await registry.saved_recipes.save(GUILD, BOB, "b", Recipe(model="other.safetensors", model_name="renamed", prompt="p").to_json())
    await registry.saved_recipes.save(OTHER_GUILD, BOB, "c", with_ink.to_json())
    assert [(u.user_id, u.name) for u in await registry.saved_recipes.using(GUILD, model=base)] == [(ALICE, "a")]
    assert [u.name for u in await registry.saved_recipes.using(GUILD, lora=ink)] == ["a"]


def test_access_policy_and_its_configuration() -> None:
    config = BotConfig.load(
        env={
            "ATELIER_ALLOWED_GUILDS": "1, 2",
            "ATELIER_SHARES": '{"1": ["community-a/", "lora:styles/*.safetensors"], "*": ["shared"]}',
            "ATELIER_OWNERS": "9",
            "ATELIER_ENGINE_TOKEN": "a-secret-token-value-xyz",
            "DISCORD_TOKEN": "discord-secret",
        }
    )
    assert "a-secret-token" not in repr(config) and "discord-secret" not in repr(config)
    policy = AccessPolicy.from_config(allowed_guilds=config.allowed_guilds, shares=config.shares, owners=config.owners)
    assert policy.guild_allowed(1) and not policy.guild_allowed(3) and policy.is_owner(9)
    assert policy.file_visible(1, "model", "community-a/x.safetensors")
    assert policy.file_visible(1, "lora", "styles/ink.safetensors")
    assert not policy.file_visible(1, "model", "styles/ink.safetensors")  # that rule is for LoRAs
    assert not policy.file_visible(1, "lora", "community-b/x.safetensors")
    assert not policy.file_visible(1, "lora", "community-a/../community-b/x.safetensors")
    assert policy.file_visible(2, "lora", "shared/x.safetensors") and not policy.file_visible(2, "lora", "community-a/x")
    assert not policy.file_visible(3, "lora", "shared/x.safetensors")  # not an allowed server
    recipe = Recipe(model="community-a/m.safetensors", model_name="M", prompt="p", loras=(LoraRef("b/x.safetensors", 1, "x"),))
    assert "the LoRA `x`" in (policy.recipe_refusal(1, recipe) or "")
    vae_elsewhere = Recipe(model="community-a/m.safetensors", model_name="M", prompt="p", vae="community-b/v.safetensors")
    assert "the VAE of the model `M`" in (policy.recipe_refusal(1, vae_elsewhere) or "")
    assert policy.recipe_refusal(1, Recipe(model="community-a/m.safetensors", prompt="p", vae="community-a/v.safetensors")) is None
    assert AccessPolicy().file_visible(123, "lora", "anything.safetensors")  # a single-server install
    for bad in ('{"guild": ["a"]}', '{"1": "a/"}', "not json"):
        with pytest.raises(ConfigError):
            BotConfig.load(env={"ATELIER_SHARES": bad})
    with pytest.raises(ConfigError):
        BotConfig.load(env={"ATELIER_IMAGE_CLASSIFIER": "magic"})


async def test_a_remote_engine_without_its_token_stops_the_bot_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.__main__ import run

    code = await run(env={"DISCORD_TOKEN": "x", "ATELIER_ENGINE_URL": "http://127.0.0.1:9"})
    assert code == 2 and "ATELIER_ENGINE_TOKEN" in capsys.readouterr().err


async def test_the_recipe_book_counts_as_a_members_data_and_goes_with_the_server(registry: Registry) -> None:
    base = await registry.models.add(GUILD, model("base"), ADMIN)
    ink = await registry.loras.add(GUILD, lora("ink"), ADMIN)
    recipe = Recipe(model=base.file, model_name="base", prompt="p", loras=(LoraRef(ink.file, 0.5, "ink"),))
    await registry.book.save(GUILD, ALICE, "harbour", recipe.to_json(), model_name="base", lora_names=["ink"])
    await registry.book.save(GUILD, BOB, "storm", recipe.to_json(), model_name="base", lora_names=["ink"])
    uses = await registry.saved_recipes.using(GUILD, lora=ink)
    assert [(u.user_id, u.name, u.in_book) for u in uses] == [(ALICE, "harbour", True), (BOB, "storm", True)]
    data = await registry.privacy.member_data(GUILD, ALICE)
    assert data.book_entries == ("harbour",) and not data.empty
    done = await registry.privacy.delete_member_data(GUILD, ALICE)
    assert done.book_entries == 1
    assert await registry.book.get(GUILD, "harbour") is None and await registry.book.get(GUILD, "storm") is not None
    await registry.privacy.record_departure(GUILD, at=0.0)
    assert await registry.purge_departed(grace_s=1, now=10.0) == [GUILD]
    assert await registry.book.get(GUILD, "storm") is None


async def test_the_job_table_is_a_members_data_too(registry: Registry) -> None:
    """Finished jobs (prompts, names) are listed and deleted with the member's data; a job still
    waiting stays for its member to cancel; a departed server's jobs go with the server."""
    import time

    from bot.jobs import Job, JobState, JobStore

    store = JobStore(registry.database)
    recipe = Recipe(model="base.safetensors", prompt="a private prompt")
    done = Job(recipe=recipe, guild_id=GUILD, channel_id=10, user_id=ALICE, user_name="alice",
               state=JobState.DONE, told=True, finished_at=time.time())  # fmt: skip
    waiting = Job(recipe=recipe, guild_id=GUILD, channel_id=10, user_id=ALICE, user_name="alice")
    elsewhere = Job(recipe=recipe, guild_id=OTHER_GUILD, channel_id=20, user_id=ALICE, user_name="alice")
    for job in (done, waiting, elsewhere):
        await store.add(job)
    assert (await registry.privacy.member_data(GUILD, ALICE)).finished_jobs == 1
    assert (await registry.privacy.delete_member_data(GUILD, ALICE)).finished_jobs == 1
    assert await store.get(done.id) is None and await store.get(waiting.id) is not None
    await registry.privacy.purge_guild(GUILD)
    assert await store.get(waiting.id) is None and await store.get(elsewhere.id) is not None
