"""Many writers at once never surface "database is locked"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.registry import Registry

from .conftest import ADMIN, GUILD, lora, model


async def test_200_concurrent_writers_on_one_registry(registry: Registry) -> None:
    await registry.add_lora(GUILD, lora("popular"), ADMIN)

    async def writer(i: int) -> None:
        if i % 4 == 0:
            await registry.add_lora(GUILD, lora(f"w{i}"), ADMIN + i)
        elif i % 4 == 1:
            await registry.record_use(GUILD, ["popular"])
        elif i % 4 == 2:
            await registry.bookmark(GUILD, i, "popular")
        else:
            await registry.record_post(GUILD, 1, 10_000 + i, i, {"seed": i})

    await asyncio.gather(*(writer(i) for i in range(200)))
    assert await registry.count_loras(GUILD) == 1 + 50
    assert (await registry.get_lora(GUILD, "popular")).uses == 50  # type: ignore[union-attr]
    assert len(await registry.search_loras(GUILD, "", bookmarked_by=2)) == 1
    assert (await registry.get_post(GUILD, 10_003)).recipe == {"seed": 3}  # type: ignore[union-attr]


async def test_two_processes_worth_of_connections_share_the_file(tmp_path: Path) -> None:
    """Two registries on one file: busy_timeout plus retry absorb the cross-connection locks."""
    path = tmp_path / "shared.db"
    first = await Registry.open(path)
    second = await Registry.open(path)
    try:
        await first.add_lora(GUILD, lora("shared"), ADMIN)

        async def writer(reg: Registry, i: int) -> None:
            await reg.record_use(GUILD, ["shared"])
            await reg.save_recipe(GUILD, i, "r", {"i": i})

        await asyncio.gather(*(writer(first if i % 2 else second, i) for i in range(200)))
        assert (await second.get_lora(GUILD, "shared")).uses == 200  # type: ignore[union-attr]
        assert (await first.get_recipe(GUILD, 123, "R")).recipe == {"i": 123}  # type: ignore[union-attr]
    finally:
        await first.close()
        await second.close()


async def test_concurrent_edits_of_different_lora_fields_both_survive_with_true_audit_rows(registry: Registry) -> None:
    await registry.add_lora(GUILD, lora("ink"), ADMIN)
    await asyncio.gather(
        registry.update_lora(GUILD, "ink", 5, description="bold strokes"),
        registry.update_lora(GUILD, "INK", 6, trigger_words=["inky"]),
        registry.record_use(GUILD, ["ink"]),  # a member's use meanwhile is counted, not undone
    )
    stored = await registry.get_lora(GUILD, "ink")
    assert stored is not None
    assert (stored.description, stored.trigger_words, stored.uses) == ("bold strokes", ("inky",), 1)
    updates = {e.actor_id: e.details for e in await registry.audit_log(GUILD) if e.action == "lora.update"}
    assert updates == {5: {"description": ["", "bold strokes"]}, 6: {"trigger_words": [[], ["inky"]]}}
    # An edit that changes nothing writes nothing, and the log does not claim a change.
    await registry.update_lora(GUILD, "ink", 7, description="bold strokes")
    assert sorted(e.actor_id for e in await registry.audit_log(GUILD) if e.action == "lora.update") == [5, 6]


async def test_concurrent_edits_of_different_model_fields_both_survive_with_true_audit_rows(registry: Registry) -> None:
    await registry.add_model(GUILD, model("Dream"), ADMIN)
    await asyncio.gather(
        registry.update_model(GUILD, "dream", 5, default_steps=30),
        registry.update_model(GUILD, "Dream", 6, nsfw=True, allowed_channel_ids=frozenset({42})),
    )
    stored = await registry.get_model(GUILD, "dream")
    assert stored is not None
    assert (stored.default_steps, stored.nsfw, stored.allowed_channel_ids) == (30, True, frozenset({42}))
    models = {e.actor_id: e.details for e in await registry.audit_log(GUILD) if e.action == "model.update"}
    assert models == {5: {"default_steps": [20, 30]}, 6: {"nsfw": [False, True], "allowed_channel_ids": [[], [42]]}}


async def test_concurrent_changes_of_different_settings_both_survive(registry: Registry) -> None:
    await asyncio.gather(
        registry.update_settings(GUILD, 5, max_loras=4),
        registry.update_settings(GUILD, 6, queue_limit_per_user=7),
    )
    settings = await registry.get_settings(GUILD)
    assert (settings.max_loras, settings.queue_limit_per_user) == (4, 7)
    log = await registry.audit_log(GUILD)
    changed = {e.actor_id: set(e.details) for e in log if e.action == "settings.update"}
    assert changed == {5: {"max_loras"}, 6: {"queue_limit_per_user"}}
