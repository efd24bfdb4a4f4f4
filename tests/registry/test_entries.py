"""Registering, editing and removing models and LoRAs, with hostile input."""

from __future__ import annotations

import pytest

from bot.registry import (
    AlreadyExists,
    Category,
    LoraEntry,
    ModelEntry,
    NotFound,
    Registry,
    RegistryError,
    parse_air,
)
from engine.protocol import FileInfo

from .conftest import ADMIN, GUILD, lora, model

SHA = "ab" * 32


def file_info(**overrides: object) -> FileInfo:
    values: dict[str, object] = {
        "path": "styles/neon_city.safetensors",
        "kind": "lora",
        "architecture": "sdxl",
        "size_bytes": 1234,
        "sha256": SHA,
        "autov2": SHA[:10],
        "a1111_hash": SHA[:12],
        "trigger_words": ("neonpunk", "city lights"),
        "output_name": "neon_city_v2",
    }
    values.update(overrides)
    return FileInfo(**values)  # type: ignore[arg-type]


async def test_lora_from_file_info_round_trips(registry: Registry) -> None:
    entry = LoraEntry.from_file_info(file_info(), category="style")
    assert entry.name == "neon_city_v2"
    stored = await registry.loras.add(GUILD, entry, ADMIN)
    assert stored.id is not None and stored.added_by == ADMIN and stored.added_at > 0
    got = await registry.loras.get(GUILD, "NEON_CITY_V2")
    assert got is not None
    assert got.architecture == "sdxl"
    assert got.category is Category.STYLE
    assert got.trigger_words == ("neonpunk", "city lights")
    assert got.sha256 == SHA and got.autov2 == SHA[:10].upper()
    assert got.file == "styles/neon_city.safetensors"
    assert got.uses == 0 and got.enabled


async def test_names_unique_case_and_invisible_insensitive(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("Detail Tweaker"), ADMIN)
    for clash in (
        "detail tweaker",
        "DETAIL  TWEAKER",
        "Detail\u200b Tweaker",
        " Detail Tweaker\u200d",
    ):
        with pytest.raises(AlreadyExists, match="already exists"):
            await registry.loras.add(GUILD, lora(clash, file="other.safetensors"), ADMIN)
    assert await registry.loras.count(GUILD) == 1


async def test_zero_width_characters_are_stripped_from_names(registry: Registry) -> None:
    stored = await registry.loras.add(GUILD, lora("neo\u200bn\ufeff glow"), ADMIN)
    assert stored.name == "neon glow"
    assert (await registry.loras.get(GUILD, "neon glow")) is not None


@pytest.mark.parametrize("name", ["", "   ", "\u200b\u200c\u200d", "\ufeff\u2060"])
async def test_invisible_only_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(RegistryError, match="empty once invisible characters are removed"):
        await registry.loras.add(GUILD, lora(name, file="x.safetensors"), ADMIN)


@pytest.mark.parametrize(
    "name",
    [
        "Robert'); DROP TABLE loras;--",
        'say "cheese"',
        "50% off _ %",
        "ĉu ŝi? 日本語 ❤ émoji 🎨",
        "O'Brien \\ backslash",
    ],
)
async def test_quotes_sql_and_unicode_are_stored_verbatim(registry: Registry, name: str) -> None:
    stored = await registry.loras.add(
        GUILD, lora(name, file="f.safetensors", description=name * 3), ADMIN
    )
    got = await registry.loras.get(GUILD, name)
    assert got is not None and got.name == stored.name == name
    assert got.description == (name * 3)
    assert await registry.loras.count(GUILD) == 1
    # A LIKE wildcard in a name is not a wildcard in lookups.
    assert await registry.loras.get(GUILD, "%") is None


async def test_names_that_break_inline_syntax_are_refused(registry: Registry) -> None:
    for name in ("a:b", "<lora>", "x>y"):
        with pytest.raises(RegistryError, match="inline"):
            await registry.loras.add(GUILD, lora(name, file="x.safetensors"), ADMIN)


async def test_long_descriptions(registry: Registry) -> None:
    text = "ü" * 10_000
    stored = await registry.loras.add(GUILD, lora("long", description=text), ADMIN)
    assert stored.description == text
    got = await registry.loras.get(GUILD, "long")
    assert got is not None and len(got.description) == 10_000
    with pytest.raises(RegistryError, match="10,001 characters long; the limit is 10,000"):
        await registry.loras.add(GUILD, lora("longer", description="x" * 10_001), ADMIN)


async def test_name_too_long_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="shorten it to 64"):
        await registry.loras.add(GUILD, lora("n" * 65, file="n.safetensors"), ADMIN)


@pytest.mark.parametrize(
    "path",
    [
        "../secret.safetensors",
        "/etc/model.safetensors",
        "a/../../b.safetensors",
        "C:/x.safetensors",
    ],
)
async def test_paths_outside_the_folder_are_refused(registry: Registry, path: str) -> None:
    with pytest.raises(RegistryError, match="not a path inside"):
        await registry.loras.add(GUILD, lora("escape", file=path), ADMIN)


async def test_only_safetensors(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="only loads safetensors"):
        await registry.loras.add(GUILD, lora("pickle", file="evil.ckpt"), ADMIN)


async def test_models_may_be_diffusers_folders_but_loras_may_not(registry: Registry) -> None:
    stored = await registry.models.add(GUILD, model("xl-folder", "sdxl", file="sdxl/base-1.0"), ADMIN)
    assert stored.file == "sdxl/base-1.0"
    with pytest.raises(RegistryError, match="only loads safetensors"):
        await registry.loras.add(GUILD, lora("folder", file="styles/neon"), ADMIN)
    with pytest.raises(RegistryError, match="only loads safetensors"):
        await registry.models.add(GUILD, model("pickled", file="v1-5.ckpt"), ADMIN)


async def test_air_and_url_sources(registry: Registry) -> None:
    air = "urn:air:sdxl:lora:civitai:120096@135931"
    stored = await registry.loras.add(GUILD, lora("air", "sdxl", source=air), ADMIN)
    assert stored.source == air
    parsed = parse_air(air)
    assert (parsed.ecosystem, parsed.type, parsed.source, parsed.id, parsed.version) == (
        "sdxl",
        "lora",
        "civitai",
        "120096",
        "135931",
    )
    assert parsed.architecture == "sdxl"
    assert parsed.url == "https://civitai.com/models/120096?modelVersionId=135931"
    url = await registry.loras.add(GUILD, lora("url", source="https://civitai.com/models/1"), ADMIN)
    assert url.source == "https://civitai.com/models/1"
    with pytest.raises(RegistryError, match="AIR is for sdxl but the file is sd15"):
        await registry.loras.add(GUILD, lora("wrong arch", "sd15", source=air), ADMIN)
    with pytest.raises(RegistryError, match="names a 'checkpoint'"):
        await registry.loras.add(
            GUILD, lora("wrong type", "sdxl", source="urn:air:sdxl:checkpoint:civitai:1@2"), ADMIN
        )
    for bad in (
        "urn:air:sdxl:lora",
        "urn:air:zzz:lora:civitai:1@2",
        "javascript:alert(1)",
        "ftp://x/y",
    ):
        with pytest.raises(RegistryError):
            await registry.loras.add(GUILD, lora("bad source", "sdxl", source=bad), ADMIN)


async def test_bad_numbers_and_enums_are_refused(registry: Registry) -> None:
    cases = [
        ({"default_weight": float("nan")}, "finite"),
        ({"default_weight": float("inf")}, "finite"),
        ({"recommended_min": 1.5, "recommended_max": 0.5}, "upside down"),
        ({"category": "weapons"}, "Unknown category"),
        ({"architecture": "sd2"}, "Unknown architecture"),
        ({"sha256": "xyz"}, "64 hexadecimal"),
        ({"preview_url": "not a url"}, "http"),
    ]
    for changes, message in cases:
        with pytest.raises(RegistryError, match=message):
            await registry.loras.add(GUILD, lora("bad", **changes), ADMIN)
    assert await registry.loras.count(GUILD) == 0


async def test_update_rename_enable_and_audit(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("first"), ADMIN)
    await registry.loras.add(GUILD, lora("second"), ADMIN)
    updated = await registry.loras.update(
        GUILD, "FIRST", 5, name="Primero", trigger_words=["uno", "UNO", " dos "]
    )
    assert updated.name == "Primero" and updated.trigger_words == ("uno", "dos")
    assert await registry.loras.get(GUILD, "first") is None
    with pytest.raises(AlreadyExists):
        await registry.loras.update(GUILD, "primero", 5, name="Second")
    with pytest.raises(RegistryError, match="no editable field uses"):
        await registry.loras.update(GUILD, "primero", 5, uses=100)
    with pytest.raises(NotFound, match="lora search"):
        await registry.loras.update(GUILD, "nobody", 5, nsfw=True)
    disabled = await registry.loras.set_enabled(GUILD, "primero", 5, False)
    assert not disabled.enabled
    assert not (await registry.loras.get(GUILD, "primero")).enabled  # type: ignore[union-attr]
    log = await registry.audit.entries(GUILD)
    assert [e.action for e in log] == ["lora.update", "lora.update", "lora.add", "lora.add"]
    assert log[0].actor_id == 5 and log[0].details == {"enabled": [True, False]}
    assert log[1].details["name"] == ["first", "Primero"]


async def test_remove_lora_cascades_bookmarks(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("gone"), ADMIN)
    assert await registry.loras.bookmark(GUILD, 9, "gone")
    assert not await registry.loras.bookmark(GUILD, 9, "GONE")
    await registry.loras.remove(GUILD, "gone", ADMIN)
    assert await registry.loras.bookmarked_by(GUILD, 9) == []
    with pytest.raises(NotFound):
        await registry.loras.remove(GUILD, "gone", ADMIN)
    assert (await registry.audit.entries(GUILD, limit=1))[0].action == "lora.remove"


async def test_bookmarks(registry: Registry) -> None:
    for name in ("a", "b", "c"):
        await registry.loras.add(GUILD, lora(name), ADMIN)
    await registry.loras.bookmark(GUILD, 9, "a")
    await registry.loras.bookmark(GUILD, 9, "c")
    await registry.loras.bookmark(GUILD, 8, "b")
    assert {x.name for x in await registry.loras.bookmarked_by(GUILD, 9)} == {"a", "c"}
    assert await registry.loras.unbookmark(GUILD, 9, "a")
    assert not await registry.loras.unbookmark(GUILD, 9, "a")
    assert not await registry.loras.unbookmark(GUILD, 9, "no such lora")
    assert [x.name for x in await registry.loras.bookmarked_by(GUILD, 9)] == ["c"]
    with pytest.raises(NotFound):
        await registry.loras.bookmark(GUILD, 9, "no such lora")


async def test_models_crud(registry: Registry) -> None:
    stored = await registry.models.add(
        GUILD, model("Dream", allowed_channel_ids=frozenset({5, 6}), nsfw=True), ADMIN
    )
    assert stored.id is not None
    got = await registry.models.get(GUILD, "dream")
    assert got is not None and got.allowed_channel_ids == {5, 6} and got.nsfw
    assert got.allowed_in(5) and not got.allowed_in(7)
    with pytest.raises(AlreadyExists):
        await registry.models.add(GUILD, model("DREAM"), ADMIN)
    with pytest.raises(RegistryError, match="multiple of 8"):
        await registry.models.add(GUILD, model("odd", default_width=500), ADMIN)
    updated = await registry.models.update(
        GUILD, "dream", ADMIN, allowed_channel_ids=frozenset(), default_steps=30
    )
    assert updated.allowed_in(7) and updated.default_steps == 30
    assert [m.name for m in await registry.models.all(GUILD)] == ["Dream"]
    await registry.models.remove(GUILD, "dream", ADMIN)
    assert await registry.models.all(GUILD) == []
    assert [e.action for e in await registry.audit.entries(GUILD)] == [
        "model.remove",
        "model.update",
        "model.add",
    ]


async def test_model_from_file_info_uses_architecture_size() -> None:
    info = file_info(kind="checkpoint", path="xl/base.safetensors", output_name=None)
    entry = ModelEntry.from_file_info(info)
    assert (entry.name, entry.default_width, entry.default_height) == ("base", 1024, 1024)


async def test_record_use_and_registered_files(registry: Registry) -> None:
    await registry.loras.add(GUILD, lora("used", file="dir/used.safetensors"), ADMIN)
    await registry.loras.add(GUILD, lora("idle"), ADMIN)
    await registry.loras.record_use(GUILD, ["used", "USED", "unknown"])
    await registry.loras.record_use(GUILD, ["used"])
    assert (await registry.loras.get(GUILD, "used")).uses == 2  # type: ignore[union-attr]
    assert (await registry.loras.get(GUILD, "idle")).uses == 0  # type: ignore[union-attr]
    assert await registry.loras.files(GUILD) == {
        "dir/used.safetensors",
        "idle.safetensors",
    }


async def test_add_loras_is_all_or_nothing(registry: Registry) -> None:
    assert await registry.loras.add_many(GUILD, [lora(f"bulk {i}") for i in range(50)], ADMIN) == 50
    with pytest.raises(AlreadyExists):
        await registry.loras.add_many(GUILD, [lora("fresh"), lora("bulk 3")], ADMIN)
    assert await registry.loras.get(GUILD, "fresh") is None
    assert await registry.loras.count(GUILD) == 50


async def test_a_models_vae_is_stored_checked_and_reaches_the_recipe(registry: Registry) -> None:
    from bot.registry import Catalog, ServerSettings
    from bot.request.parse import build_request
    from bot.request.validation import Validated, validate

    stored = await registry.models.add(GUILD, model("Juggernaut XL", "sdxl", vae="vae/sdxl-fp16-fix.safetensors"), ADMIN)
    assert stored.vae == "vae/sdxl-fp16-fix.safetensors"
    got = await registry.models.get(GUILD, "juggernaut xl")
    assert got is not None and got.vae == "vae/sdxl-fp16-fix.safetensors"
    assert (await registry.models.add(GUILD, model("Dream"), ADMIN)).vae == ""  # the model's own
    with pytest.raises(RegistryError, match="only loads safetensors"):
        await registry.models.add(GUILD, model("Pickled VAE", vae="vae/kl-f8.pt"), ADMIN)
    with pytest.raises(RegistryError, match="inside the engine's folder"):
        await registry.models.update(GUILD, "dream", ADMIN, vae="../elsewhere.safetensors")
    updated = await registry.models.update(GUILD, "dream", ADMIN, vae="vae/other.safetensors")
    assert updated.vae == "vae/other.safetensors"
    catalog = Catalog(GUILD, ServerSettings(), [got], [])
    request = build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False,
                            prompt="a lighthouse", model="Juggernaut XL")  # fmt: skip
    result = validate(request, catalog, new_seed=lambda: 5)
    assert isinstance(result, Validated) and result.recipe.vae == "vae/sdxl-fp16-fix.safetensors"
