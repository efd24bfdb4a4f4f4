"""The server recipe book, cards, lineage and hash look-ups (real SQLite), and matching an
imported or stored recipe to the registry (bot.recipes.match)."""

from __future__ import annotations

import pytest

from bot.recipes.match import health, match_found, usable
from bot.registry import AlreadyExists, Registry, RegistryError
from bot.registry.recipe_book import Lineage
from engine.protocol import LoraRef, Recipe
from engine.recipe.readers import FoundRecipe, Resource
from tests.registry.conftest import ADMIN, GUILD, OTHER_GUILD, lora, model

SHA = "ab" * 32


def recipe(*loras: str, model_name: str = "base") -> Recipe:
    return Recipe(model="base.safetensors", model_name=model_name, prompt="p", loras=tuple(LoraRef(f"{n}.safetensors", 0.5, n) for n in loras))


async def save(registry: Registry, name: str, r: Recipe, author: int = 5, guild: int = GUILD):
    return await registry.book.save(guild, author, name, r.to_json(), model_name=r.model_label, lora_names=[lo.name for lo in r.loras])


async def test_names_are_unique_per_server_and_cleaned(registry: Registry) -> None:
    entry = await save(registry, "  Foggy   kite ", recipe("ink"))
    assert entry.name == "Foggy kite"
    with pytest.raises(AlreadyExists, match="already has \\*\\*Foggy kite\\*\\*"):
        await save(registry, "FOGGY KITE", recipe())
    await save(registry, "Foggy kite", recipe(), guild=OTHER_GUILD)  # another server's book
    for bad in ("(masterpiece:1.2)", "x" * 65, "   "):
        with pytest.raises(RegistryError):
            await save(registry, bad, recipe())
    assert (await registry.book.get(OTHER_GUILD, "foggy kite")).recipe["loras"] == []


async def test_list_sorts_and_filters(registry: Registry) -> None:
    a = await save(registry, "a", recipe("ink", "fog"), author=1)
    b = await save(registry, "b", recipe("fog", model_name="other"), author=2)
    await save(registry, "c", recipe(), author=1)
    await registry.book.count_use(GUILD, b.id)
    await registry.book.count_use(GUILD, b.id)
    await registry.book.count_use(GUILD, a.id)
    newest, total = await registry.book.list(GUILD)
    assert [e.name for e in newest] == ["c", "b", "a"] and total == 3
    assert [e.name for e in (await registry.book.list(GUILD, sort="most_used"))[0]] == ["b", "a", "c"]
    assert [e.name for e in (await registry.book.list(GUILD, lora="FOG"))[0]] == ["b", "a"]
    assert [e.name for e in (await registry.book.list(GUILD, model="other"))[0]] == ["b"]
    assert [e.name for e in (await registry.book.list(GUILD, author_id=1))[0]] == ["c", "a"]
    page, total = await registry.book.list(GUILD, limit=2, offset=2)
    assert [e.name for e in page] == ["a"] and total == 3
    assert await registry.book.list(OTHER_GUILD) == ([], 0)
    assert await registry.book.names(GUILD, "") == ["b", "a", "c"]


async def test_cards_and_lineage_stay_in_their_server(registry: Registry) -> None:
    card = await registry.book.add_card(GUILD, 10, recipe().to_json(), author_id=1, shared_by=2, source="post", source_message_id=99)
    await registry.book.set_card_message(GUILD, card.id, 555)
    assert (await registry.book.card_by_message(GUILD, 555)).id == card.id
    assert await registry.book.card(OTHER_GUILD, card.id) is None
    await registry.posts.record(GUILD, 10, 700, 3, recipe().to_json())
    await registry.book.record_lineage(GUILD, 700, Lineage("remix", 99, 10), [8001, 8002])
    assert await registry.book.lineage(GUILD, 700) == Lineage("remix", 99, 10)
    assert await registry.book.post_for_attachment(GUILD, 8002) == 700
    assert await registry.book.post_for_attachment(OTHER_GUILD, 8002) is None


async def test_imported_resources_match_by_hash_then_version_then_name(registry: Registry) -> None:
    await registry.models.add(GUILD, model("base", sha256="cd" * 32, a1111_hash="ef" * 6), ADMIN)
    await registry.loras.add(GUILD, lora("ink", sha256=SHA, a1111_hash="0123456789ab"), ADMIN)
    await registry.loras.add(GUILD, lora("fog", source="urn:air:sd1:lora:civitai:120096@135931"), ADMIN)
    await registry.loras.add(GUILD, lora("Pixel Art", file="styles/pixel_art_v2.safetensors"), ADMIN)
    await registry.settings.update(GUILD, ADMIN, default_model="base")
    catalog = await registry.catalogs.get(GUILD)
    found = FoundRecipe(
        "ComfyUI", "test", Recipe(model="", prompt="a fox", seed=3),
        (
            Resource("model", "renamed-elsewhere", hashes=("cdcdcdcdcd",)),  # AutoV2
            Resource("lora", "who-knows", 0.7, ("0123456789ab",)),  # A1111's LoRA hash
            Resource("lora", "Fog v2", 0.4, civitai_version=135931),
            Resource("lora", "pixel_art_v2", 0.9),  # file name
            Resource("lora", "not-here", 1.0, ("99" * 6,)),
            Resource("embedding", "goodhands"),
        ),
        missing=("steps", "size"),
    )  # fmt: skip
    matched = await match_found(registry, catalog, GUILD, found)
    assert matched.recipe.model_name == "base" and matched.recipe.steps == 20 and matched.recipe.width == 512
    assert [(lo.name, lo.weight) for lo in matched.recipe.loras] == [("ink", 0.7), ("fog", 0.4), ("Pixel Art", 0.9)]
    assert matched.how == ["model `base` (by hash)", "LoRA `ink` (by hash)", "LoRA `fog` (by Civitai version)", "LoRA `Pixel Art` (by file name)"]
    assert any("`not-here`" in p and "/lora add" in p for p in matched.problems)
    assert any("goodhands" in p and "/embedding add" in p for p in matched.problems)
    other = await match_found(registry, await registry.catalogs.get(OTHER_GUILD), OTHER_GUILD, found)
    assert other.recipe.loras == ()  # another server's registry matches nothing


async def test_a_stored_recipe_says_what_is_missing_and_what_to_use_instead(registry: Registry) -> None:
    await registry.models.add(GUILD, model("base"), ADMIN)
    for name in ("watercolor", "watercolour soft", "ink"):
        await registry.loras.add(GUILD, lora(name), ADMIN)
    stored = recipe("watercolor", "ink")
    assert health(stored, await registry.catalogs.get(GUILD)) == []
    await registry.loras.remove(GUILD, "watercolor", ADMIN)
    await registry.loras.set_enabled(GUILD, "ink", ADMIN, False)
    catalog = await registry.catalogs.get(GUILD)
    problems = health(stored, catalog)
    assert "`watercolor` was removed" in problems[0] and "`watercolour soft`" in problems[0]
    assert "`ink` is disabled" in problems[1]
    assert usable(stored, catalog).loras == ()
    await registry.models.remove(GUILD, "base", ADMIN)
    assert "model `base` is no longer" in health(stored, await registry.catalogs.get(GUILD))[0]


async def test_an_embedding_matched_by_hash_takes_this_servers_name_in_the_prompt(registry: Registry) -> None:
    from bot.registry.models import EmbeddingEntry

    await registry.models.add(GUILD, model("base"), ADMIN)
    await registry.settings.update(GUILD, ADMIN, default_model="base")
    await registry.embeddings.add(GUILD, EmbeddingEntry("EasyNeg", "sd15", "easy.safetensors", sha256="12" * 32), ADMIN)
    found = FoundRecipe(
        "AUTOMATIC1111", "test", Recipe(model="", prompt="a cat", negative_prompt="easynegative, lowres"),
        (Resource("embedding", "easynegative", hashes=("121212121212",)),),
    )  # fmt: skip
    matched = await match_found(registry, await registry.catalogs.get(GUILD), GUILD, found)
    assert matched.recipe.negative_prompt == "EasyNeg, lowres" and "embedding `EasyNeg` (by hash)" in matched.how
