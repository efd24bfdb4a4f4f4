"""One server's data is invisible to every other server, through every read path."""

from __future__ import annotations

import pytest

from bot.registry import NotFound, Registry

from .conftest import ADMIN, GUILD, OTHER_GUILD, lora, model


async def test_second_guild_sees_nothing(registry: Registry) -> None:
    await registry.models.add(GUILD, model("Dream"), ADMIN)
    await registry.loras.add(
        GUILD, lora("Secret Style", trigger_words=("hush",), description="private"), ADMIN
    )
    await registry.loras.bookmark(GUILD, 9, "secret style")
    await registry.saved_recipes.save(GUILD, 9, "mine", {"prompt": "x"})
    await registry.posts.record(GUILD, 1, 500, 9, {"prompt": "x"})
    await registry.settings.update(GUILD, ADMIN, max_loras=5)

    other = OTHER_GUILD
    assert await registry.models.get(other, "Dream") is None
    assert await registry.models.all(other) == []
    assert await registry.models.autocomplete(other, "") == []
    assert await registry.loras.get(other, "Secret Style") is None
    assert await registry.loras.search(other, "") == []
    assert await registry.loras.search(other, "hush") == []
    assert await registry.loras.search(other, "", bookmarked_by=9) == []
    assert await registry.loras.autocomplete(other, "") == []
    assert await registry.loras.autocomplete(other, "secret") == []
    assert await registry.loras.count(other) == 0
    assert await registry.loras.files(other) == set()
    assert await registry.loras.bookmarked_by(other, 9) == []
    assert await registry.saved_recipes.of_member(other, 9) == []
    assert await registry.saved_recipes.get(other, 9, "mine") is None
    assert await registry.posts.get(other, 500) is None
    assert not await registry.posts.delete(other, 500)
    assert (await registry.settings.get(other)).max_loras == 3
    assert await registry.audit.entries(other) == []
    catalog = await registry.catalogs.get(other)
    assert not catalog.loras and not catalog.models
    assert catalog.suggest_loras("secret") == []

    # Writes aimed at the other guild cannot touch the first guild's rows.
    with pytest.raises(NotFound):
        await registry.loras.bookmark(other, 9, "Secret Style")
    with pytest.raises(NotFound):
        await registry.loras.remove(other, "Secret Style", ADMIN)
    with pytest.raises(NotFound):
        await registry.models.update(other, "Dream", ADMIN, nsfw=True)
    await registry.loras.record_use(other, ["Secret Style"])
    await registry.posts.record(other, 1, 500, 8, {"prompt": "hijack"})
    post = await registry.posts.get(GUILD, 500)
    assert post is not None and post.recipe == {"prompt": "x"} and post.user_id == 9
    assert (await registry.loras.get(GUILD, "Secret Style")).uses == 0  # type: ignore[union-attr]

    # The same name may exist independently in both guilds.
    await registry.loras.add(other, lora("Secret Style", "sdxl"), ADMIN)
    assert (await registry.loras.get(GUILD, "secret style")).architecture == "sd15"  # type: ignore[union-attr]
    assert (await registry.loras.get(other, "secret style")).architecture == "sdxl"  # type: ignore[union-attr]
