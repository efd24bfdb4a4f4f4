"""What the registry keeps in memory stays bounded however many servers it serves."""

from __future__ import annotations

import pytest

from bot.registry import Registry

from .conftest import ADMIN, lora


async def test_catalogs_are_kept_for_the_most_recently_used_servers_only(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.registry.catalog_cache as module

    monkeypatch.setattr(module, "CATALOGS_KEPT", 3, raising=False)
    servers = list(range(500, 508))
    for guild in servers:
        await registry.loras.add(guild, lora(f"ink{guild}"), ADMIN)
        assert f"ink{guild}" in (await registry.catalogs.get(guild)).loras
    await registry.catalogs.get(servers[-3])  # used again: now the most recent
    cached = registry.catalogs._cached
    assert len(cached) == 3 and list(cached) == [servers[-2], servers[-1], servers[-3]]
    # A dropped catalog is built again from the file, whole.
    again = await registry.catalogs.get(servers[0])
    assert list(again.loras) == [f"ink{servers[0]}"] and len(cached) == 3


async def test_a_purged_server_leaves_no_catalog_entries(registry: Registry) -> None:
    for guild in (600, 601):
        await registry.loras.add(guild, lora("ink"), ADMIN)
        await registry.catalogs.get(guild)
        await registry.privacy.record_departure(guild, at=1000.0)
    assert sorted(await registry.purge_departed(grace_s=10, now=2000.0)) == [600, 601]
    assert {600, 601}.isdisjoint(registry.catalogs._cached)
    assert {600, 601}.isdisjoint(registry.catalogs._locks)
    assert {600, 601}.isdisjoint(registry.catalogs._versions)
    assert (await registry.catalogs.get(600)).loras == {}  # and a later look finds it empty
