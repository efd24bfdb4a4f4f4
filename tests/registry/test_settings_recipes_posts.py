"""Per-server settings, saved recipes and the posts behind image buttons."""

from __future__ import annotations

import pytest

from bot.registry import NsfwPolicy, Registry, RegistryError, ServerSettings
from bot.registry.saved_recipes import MAX_SAVED_RECIPES

from .conftest import ADMIN, GUILD


async def test_defaults_match_the_issue(registry: Registry) -> None:
    s = await registry.settings.get(GUILD)
    assert s.max_loras == 3 and (s.weight_min, s.weight_max) == (0.0, 2.0)
    assert s.prompt_limit == 4096 and s.auto_trigger_words is True
    assert s.nsfw_policy is NsfwPolicy.NSFW_CHANNELS and s.queue_limit_per_user >= 1


async def test_update_settings_persists_and_audits(registry: Registry) -> None:
    updated = await registry.settings.update(
        GUILD,
        ADMIN,
        max_loras=4,
        role_max_loras={111: 8},
        weight_min=-1.5,
        nsfw_policy="never",
        queue_limit_per_user=5,
        auto_trigger_words=False,
    )
    assert updated.nsfw_policy is NsfwPolicy.NEVER
    again = await registry.settings.get(GUILD)
    assert again == updated
    assert again.max_loras_for(frozenset({111, 5})) == 8
    assert again.max_loras_for(frozenset({5})) == 4
    entry = (await registry.audit.entries(GUILD))[0]
    assert entry.action == "settings.update" and entry.details["weight_min"] == [0.0, -1.5]
    assert entry.details["role_max_loras"] == [{}, {"111": 8}]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weight_min": 3.0}, "minimum .* is above the maximum"),
        ({"max_loras": 99}, "from 0 to 16"),
        ({"steps_min": 60, "steps_max": 10}, "steps minimum"),
        ({"size_max": 1001}, "multiple of 8"),
        ({"nsfw_policy": "sometimes"}, "Unknown NSFW policy"),
        ({"cfg_max": float("nan")}, "finite"),
        ({"prompt_limit": 0}, "prompt length limit"),
        ({"colour": "blue"}, "no editable field colour"),
        ({"role_max_loras": {"admins": 5}}, "Role ids must be numbers"),
    ],
)
async def test_bad_settings_are_refused_and_nothing_changes(
    registry: Registry, changes: dict, message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        await registry.settings.update(GUILD, ADMIN, **changes)
    assert await registry.settings.get(GUILD) == ServerSettings()
    assert await registry.audit.entries(GUILD) == []


def test_settings_json_tolerates_unknown_and_missing_keys() -> None:
    s = ServerSettings.from_json({"max_loras": 6, "from_the_future": True})
    assert s.max_loras == 6 and s.weight_max == 2.0


async def test_saved_recipes(registry: Registry) -> None:
    first = await registry.saved_recipes.save(GUILD, 9, "Night City", {"prompt": "neon", "seed": 1})
    await registry.saved_recipes.save(GUILD, 9, "night city", {"prompt": "neon", "seed": 2})
    recipes = await registry.saved_recipes.of_member(GUILD, 9)
    assert len(recipes) == 1 and recipes[0].recipe["seed"] == 2 and recipes[0].id == first.id
    assert (await registry.saved_recipes.get(GUILD, 9, "NIGHT CITY")) is not None
    assert await registry.saved_recipes.of_member(GUILD, 8) == []
    assert await registry.saved_recipes.delete(GUILD, 9, "night city")
    assert not await registry.saved_recipes.delete(GUILD, 9, "night city")
    with pytest.raises(RegistryError, match="over the 32,000 limit"):
        await registry.saved_recipes.save(GUILD, 9, "huge", {"prompt": "x" * 40_000})
    with pytest.raises(RegistryError, match="empty"):
        await registry.saved_recipes.save(GUILD, 9, "\u200b", {"prompt": "x"})


async def test_saved_recipe_cap(registry: Registry) -> None:
    for i in range(MAX_SAVED_RECIPES):
        await registry.saved_recipes.save(GUILD, 9, f"r{i}", {"i": i})
    with pytest.raises(RegistryError, match="delete one"):
        await registry.saved_recipes.save(GUILD, 9, "one more", {})
    # Overwriting an existing name is still fine at the cap.
    await registry.saved_recipes.save(GUILD, 9, "r0", {"i": -1})


async def test_posts_survive_reopening(registry: Registry, tmp_path) -> None:
    recipe = {"model": "dream.safetensors", "prompt": 'ünïcode "quoted"', "seed": 42}
    await registry.posts.record(GUILD, 10, 900, 9, recipe)
    reopened = await Registry.open(registry.path)
    try:
        post = await reopened.posts.get(GUILD, 900)
        assert (
            post is not None
            and post.recipe == recipe
            and (post.channel_id, post.user_id) == (10, 9)
        )
        assert await reopened.posts.delete(GUILD, 900)
        assert await reopened.posts.get(GUILD, 900) is None
    finally:
        await reopened.close()
