"""One server's data is invisible to every other server, through every read path."""

from __future__ import annotations

import pytest

from bot.registry import NotFound, Registry

from .conftest import ADMIN, GUILD, OTHER_GUILD, lora, model


async def test_second_guild_sees_nothing(registry: Registry) -> None:
    await registry.add_model(GUILD, model("Dream"), ADMIN)
    await registry.add_lora(
        GUILD, lora("Secret Style", trigger_words=("hush",), description="private"), ADMIN
    )
    await registry.bookmark(GUILD, 9, "secret style")
    await registry.save_recipe(GUILD, 9, "mine", {"prompt": "x"})
    await registry.record_post(GUILD, 1, 500, 9, {"prompt": "x"})
    await registry.update_settings(GUILD, ADMIN, max_loras=5)

    other = OTHER_GUILD
    assert await registry.get_model(other, "Dream") is None
    assert await registry.list_models(other) == []
    assert await registry.autocomplete_models(other, "") == []
    assert await registry.get_lora(other, "Secret Style") is None
    assert await registry.search_loras(other, "") == []
    assert await registry.search_loras(other, "hush") == []
    assert await registry.search_loras(other, "", bookmarked_by=9) == []
    assert await registry.autocomplete_loras(other, "") == []
    assert await registry.autocomplete_loras(other, "secret") == []
    assert await registry.count_loras(other) == 0
    assert await registry.registered_lora_files(other) == set()
    assert await registry.bookmarks(other, 9) == []
    assert await registry.saved_recipes(other, 9) == []
    assert await registry.get_recipe(other, 9, "mine") is None
    assert await registry.get_post(other, 500) is None
    assert not await registry.delete_post(other, 500)
    assert (await registry.get_settings(other)).max_loras == 3
    assert await registry.audit_log(other) == []
    catalog = await registry.catalog(other)
    assert not catalog.loras and not catalog.models
    assert catalog.suggest_loras("secret") == []

    # Writes aimed at the other guild cannot touch the first guild's rows.
    with pytest.raises(NotFound):
        await registry.bookmark(other, 9, "Secret Style")
    with pytest.raises(NotFound):
        await registry.remove_lora(other, "Secret Style", ADMIN)
    with pytest.raises(NotFound):
        await registry.update_model(other, "Dream", ADMIN, nsfw=True)
    await registry.record_use(other, ["Secret Style"])
    await registry.record_post(other, 1, 500, 8, {"prompt": "hijack"})
    post = await registry.get_post(GUILD, 500)
    assert post is not None and post.recipe == {"prompt": "x"} and post.user_id == 9
    assert (await registry.get_lora(GUILD, "Secret Style")).uses == 0  # type: ignore[union-attr]

    # The same name may exist independently in both guilds.
    await registry.add_lora(other, lora("Secret Style", "sdxl"), ADMIN)
    assert (await registry.get_lora(GUILD, "secret style")).architecture == "sd15"  # type: ignore[union-attr]
    assert (await registry.get_lora(other, "secret style")).architecture == "sdxl"  # type: ignore[union-attr]
