"""What the registry keeps in memory stays bounded however many servers it serves."""

from __future__ import annotations

import pytest

from bot.registry import Registry

from .conftest import ADMIN, lora


async def test_catalogs_are_kept_for_the_most_recently_used_servers_only(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.registry.registry as module

    monkeypatch.setattr(module, "CATALOGS_KEPT", 3, raising=False)
    servers = list(range(500, 508))
    for guild in servers:
        await registry.add_lora(guild, lora(f"ink{guild}"), ADMIN)
        assert f"ink{guild}" in (await registry.catalog(guild)).loras
    await registry.catalog(servers[-3])  # used again: now the most recent
    cached = registry._catalogs
    assert len(cached) == 3 and list(cached) == [servers[-2], servers[-1], servers[-3]]
    # A dropped catalog is built again from the file, whole.
    again = await registry.catalog(servers[0])
    assert list(again.loras) == [f"ink{servers[0]}"] and len(cached) == 3


async def test_a_purged_server_leaves_no_catalog_entries(registry: Registry) -> None:
    for guild in (600, 601):
        await registry.add_lora(guild, lora("ink"), ADMIN)
        await registry.catalog(guild)
        await registry.privacy.record_departure(guild, at=1000.0)
    assert sorted(await registry.purge_departed(grace_s=10, now=2000.0)) == [600, 601]
    assert {600, 601}.isdisjoint(registry._catalogs)
    assert {600, 601}.isdisjoint(registry._catalog_locks)
    assert {600, 601}.isdisjoint(registry._catalog_versions)
    assert (await registry.catalog(600)).loras == {}  # and a later look finds it empty
