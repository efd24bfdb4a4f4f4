"""Many writers at once never surface "database is locked"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.registry import Registry

from .conftest import ADMIN, GUILD, lora


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
