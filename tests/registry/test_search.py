"""Full-text search and Discord autocomplete."""

from __future__ import annotations

import pytest

from bot.registry import Category, Registry
from bot.registry.search import fts_query

from .conftest import ADMIN, GUILD, lora


@pytest.fixture
async def stocked(registry: Registry) -> Registry:
    entries = [
        lora(
            "Neon Cyberpunk",
            "sdxl",
            category="style",
            trigger_words=("neonpunk",),
            description="glowing signs at night",
        ),
        lora("Cyber Armor", "sd15", category="outfit", trigger_words=("mecha suit",), nsfw=True),
        lora(
            "Watercolor",
            "sdxl",
            category="style",
            description="soft paper texture, cyberpunk friendly",
        ),
        lora("Hand Fixer", "sd15", category="detail", trigger_words=("good hands",)),
        lora("Ghibli Sky", "sd15", category="style", trigger_words=("anime sky",), enabled=False),
    ]
    for entry in entries:
        await registry.loras.add(GUILD, entry, ADMIN)
    await registry.loras.record_use(GUILD, ["Watercolor"])
    await registry.loras.record_use(GUILD, ["Watercolor", "Hand Fixer"])
    return registry


def names(entries: list) -> list[str]:
    return [e.name for e in entries]


async def test_search_name_trigger_and_description(stocked: Registry) -> None:
    assert set(names(await stocked.loras.search(GUILD, "cyber"))) == {
        "Neon Cyberpunk",
        "Cyber Armor",
        "Watercolor",
    }
    assert names(await stocked.loras.search(GUILD, "mecha")) == ["Cyber Armor"]
    assert names(await stocked.loras.search(GUILD, "glowing night")) == ["Neon Cyberpunk"]
    assert names(await stocked.loras.search(GUILD, "nothing-like-this")) == []


async def test_search_filters(stocked: Registry) -> None:
    assert names(await stocked.loras.search(GUILD, "cyber", architecture="sd15")) == ["Cyber Armor"]
    assert set(names(await stocked.loras.search(GUILD, "", category=Category.STYLE))) == {
        "Neon Cyberpunk",
        "Watercolor",
        "Ghibli Sky",
    }
    assert "Cyber Armor" not in names(await stocked.loras.search(GUILD, "", nsfw=False))
    assert names(await stocked.loras.search(GUILD, "", nsfw=True)) == ["Cyber Armor"]
    assert "Ghibli Sky" not in names(await stocked.loras.search(GUILD, "", enabled=True))
    await stocked.loras.bookmark(GUILD, 9, "hand fixer")
    await stocked.loras.bookmark(GUILD, 9, "watercolor")
    assert set(names(await stocked.loras.search(GUILD, "", bookmarked_by=9))) == {
        "Hand Fixer",
        "Watercolor",
    }
    assert names(await stocked.loras.search(GUILD, "soft", bookmarked_by=9)) == ["Watercolor"]
    assert names(await stocked.loras.search(GUILD, "", bookmarked_by=8)) == []


async def test_search_sorts_and_paging(stocked: Registry) -> None:
    assert names(await stocked.loras.search(GUILD, "", sort="name")) == [
        "Cyber Armor",
        "Ghibli Sky",
        "Hand Fixer",
        "Neon Cyberpunk",
        "Watercolor",
    ]
    assert names(await stocked.loras.search(GUILD, "", sort="most_used"))[:2] == [
        "Watercolor",
        "Hand Fixer",
    ]
    assert names(await stocked.loras.search(GUILD, "", sort="newest"))[0] == "Ghibli Sky"
    page2 = await stocked.loras.search(GUILD, "", sort="name", limit=2, offset=2)
    assert names(page2) == ["Hand Fixer", "Neon Cyberpunk"]
    with pytest.raises(ValueError, match="Unknown sort"):
        await stocked.loras.search(GUILD, "", sort="random")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '""',
        "*",
        "cyber*",
        "NEAR(a b)",
        "-cyber",
        "a OR b",
        "name:cyber",
        "'; DROP TABLE loras; --",
        "^",
        "\u200b",
        "🎨",
    ],
)
async def test_fts_syntax_in_user_text_is_harmless(stocked: Registry, query: str) -> None:
    results = await stocked.loras.search(GUILD, query)
    assert isinstance(results, list)
    await stocked.loras.autocomplete(GUILD, query)
    assert await stocked.loras.count(GUILD) == 5


def test_fts_query_quotes_every_token() -> None:
    assert fts_query('cy"ber NEAR x') == '"cy"* "ber"* "near"* "x"*'
    assert fts_query("!!!") is None


async def test_autocomplete_prefix_while_typing(stocked: Registry) -> None:
    for typed in ("c", "cy", "cyb", "cyber", "CYBER A"):
        values = [c.value for c in await stocked.loras.autocomplete(GUILD, typed)]
        assert values[0] == "Cyber Armor", typed
    # Word prefixes inside names and trigger words match too, after name prefixes.
    values = [c.value for c in await stocked.loras.autocomplete(GUILD, "cyber")]
    assert values[:2] == ["Cyber Armor", "Neon Cyberpunk"]
    assert [c.value for c in await stocked.loras.autocomplete(GUILD, "good ha")] == ["Hand Fixer"]


async def test_autocomplete_filters_architecture_disabled_and_nsfw(stocked: Registry) -> None:
    sdxl = [c.value for c in await stocked.loras.autocomplete(GUILD, "", architecture="sdxl")]
    assert set(sdxl) == {"Neon Cyberpunk", "Watercolor"}
    assert [
        c.value for c in await stocked.loras.autocomplete(GUILD, "cyber", architecture="sdxl")
    ] == ["Neon Cyberpunk"]
    assert "Ghibli Sky" not in [c.value for c in await stocked.loras.autocomplete(GUILD, "ghibli")]
    assert [
        c.value for c in await stocked.loras.autocomplete(GUILD, "cyber a", nsfw_ok=False)
    ] == []
    # Empty text: enabled LoRAs, most used first.
    assert [c.value for c in await stocked.loras.autocomplete(GUILD, "")][:2] == [
        "Watercolor",
        "Hand Fixer",
    ]


async def test_autocomplete_respects_discord_limits(registry: Registry) -> None:
    long_words = tuple("w" * 150 + str(i) for i in range(3))
    await registry.loras.add_many(
        GUILD,
        [lora(f"star {i:02d} " + "x" * 50, trigger_words=long_words) for i in range(40)],
        ADMIN,
    )
    choices = await registry.loras.autocomplete(GUILD, "star")
    assert len(choices) == 25
    assert all(len(c.name) <= 100 and len(c.value) <= 100 for c in choices)
    assert [c.value for c in choices] == sorted(c.value for c in choices)
    assert len(await registry.loras.autocomplete(GUILD, "")) == 25


async def test_autocomplete_models(registry: Registry) -> None:
    from .conftest import model

    await registry.models.add(GUILD, model("Dream Shaper"), ADMIN)
    await registry.models.add(GUILD, model("Juggernaut XL", "sdxl"), ADMIN)
    await registry.models.add(GUILD, model("Night Dream", nsfw=True), ADMIN)
    await registry.models.add(GUILD, model("Private", allowed_channel_ids=frozenset({42})), ADMIN)
    assert [c.value for c in await registry.models.autocomplete(GUILD, "dream")] == [
        "Dream Shaper",
        "Night Dream",
    ]
    assert [c.value for c in await registry.models.autocomplete(GUILD, "dream", nsfw_ok=False)] == [
        "Dream Shaper"
    ]
    assert "Private" not in [
        c.value for c in await registry.models.autocomplete(GUILD, "", channel_id=1)
    ]
    assert "Private" in [
        c.value for c in await registry.models.autocomplete(GUILD, "", channel_id=42)
    ]
    assert (await registry.models.autocomplete(GUILD, "jugg"))[0].name == "Juggernaut XL · sdxl"
