"""Many writers at once never surface "database is locked"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.registry import Registry

from .conftest import ADMIN, GUILD, lora, model


async def test_200_concurrent_writers_on_one_registry(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("popular"), ADMIN)

    async def writer(i: int) -> None:
        if i % 4 == 0:
            await registry.loras.add(GUILD, lora(f"w{i}"), ADMIN + i)
        elif i % 4 == 1:
            await registry.loras.record_use(GUILD, ["popular"])
        elif i % 4 == 2:
            await registry.loras.bookmark(GUILD, i, "popular")
        else:
            await registry.posts.record(GUILD, 1, 10_000 + i, i, {"seed": i})

    await asyncio.gather(*(writer(i) for i in range(200)))
    assert await registry.loras.count(GUILD) == 1 + 50
    assert (await registry.loras.get(GUILD, "popular")).uses == 50  # type: ignore[union-attr]
    assert len(await registry.loras.search(GUILD, "", bookmarked_by=2)) == 1
    assert (await registry.posts.get(GUILD, 10_003)).recipe == {"seed": 3}  # type: ignore[union-attr]


async def test_two_processes_worth_of_connections_share_the_file(tmp_path: Path) -> None:
    """Two registries on one file: busy_timeout plus retry absorb the cross-connection locks."""
    path = tmp_path / "shared.db"
    first = await Registry.open(path)
    second = await Registry.open(path)
    try:
        await first.loras.add(GUILD, lora("shared"), ADMIN)

        async def writer(reg: Registry, i: int) -> None:
            await reg.loras.record_use(GUILD, ["shared"])
            await reg.saved_recipes.save(GUILD, i, "r", {"i": i})

        await asyncio.gather(*(writer(first if i % 2 else second, i) for i in range(200)))
        assert (await second.loras.get(GUILD, "shared")).uses == 200  # type: ignore[union-attr]
        assert (await first.saved_recipes.get(GUILD, 123, "R")).recipe == {"i": 123}  # type: ignore[union-attr]
    finally:
        await first.close()
        await second.close()


async def test_concurrent_edits_of_different_lora_fields_both_survive_with_true_audit_rows(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("ink"), ADMIN)
    await asyncio.gather(
        registry.loras.update(GUILD, "ink", 5, description="bold strokes"),
        registry.loras.update(GUILD, "INK", 6, trigger_words=["inky"]),
        registry.loras.record_use(GUILD, ["ink"]),  # a member's use meanwhile is counted, not undone
    )
    stored = await registry.loras.get(GUILD, "ink")
    assert stored is not None
    assert (stored.description, stored.trigger_words, stored.uses) == ("bold strokes", ("inky",), 1)
    updates = {e.actor_id: e.details for e in await registry.audit.entries(GUILD) if e.action == "lora.update"}
    assert updates == {5: {"description": ["", "bold strokes"]}, 6: {"trigger_words": [[], ["inky"]]}}
    # An edit that changes nothing writes nothing, and the log does not claim a change.
    await registry.loras.update(GUILD, "ink", 7, description="bold strokes")
    assert sorted(e.actor_id for e in await registry.audit.entries(GUILD) if e.action == "lora.update") == [5, 6]


async def test_concurrent_edits_of_different_model_fields_both_survive_with_true_audit_rows(registry: Registry) -> None:
    await registry.models.add(GUILD, model("Dream"), ADMIN)
    await asyncio.gather(
        registry.models.update(GUILD, "dream", 5, default_steps=30),
        registry.models.update(GUILD, "Dream", 6, nsfw=True, allowed_channel_ids=frozenset({42})),
    )
    stored = await registry.models.get(GUILD, "dream")
    assert stored is not None
    assert (stored.default_steps, stored.nsfw, stored.allowed_channel_ids) == (30, True, frozenset({42}))
    models = {e.actor_id: e.details for e in await registry.audit.entries(GUILD) if e.action == "model.update"}
    assert models == {5: {"default_steps": [20, 30]}, 6: {"nsfw": [False, True], "allowed_channel_ids": [[], [42]]}}


async def test_concurrent_changes_of_different_settings_both_survive(registry: Registry) -> None:
    await asyncio.gather(
        registry.settings.update(GUILD, 5, max_loras=4),
        registry.settings.update(GUILD, 6, queue_limit_per_user=7),
    )
    settings = await registry.settings.get(GUILD)
    assert (settings.max_loras, settings.queue_limit_per_user) == (4, 7)
    log = await registry.audit.entries(GUILD)
    changed = {e.actor_id: set(e.details) for e in log if e.action == "settings.update"}
    assert changed == {5: {"max_loras"}, 6: {"queue_limit_per_user"}}
