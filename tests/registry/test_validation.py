"""validate(): every problem at once, each with a fix; a recipe when all is well."""

from __future__ import annotations

from typing import Any

import pytest

from bot.registry import Catalog, NsfwPolicy, Registry, ServerSettings
from bot.request.parse import build_request
from bot.request.validation import SAMPLERS, Rejected, Validated, validate

from .conftest import ADMIN, GUILD, lora, model

ROLE_VIP = 555


def catalog(**settings: Any) -> Catalog:
    return Catalog(
        GUILD,
        ServerSettings(**settings),
        [
            model("Dream", "sd15", sha256="cd" * 32, default_negative="blurry"),
            model("Juggernaut XL", "sdxl"),
            model("Flux Dev", "flux", default_width=1024, default_height=1024, default_cfg=3.5),
            model("Spicy", "sd15", nsfw=True),
            model("Staff Only", "sd15", allowed_channel_ids=frozenset({99})),
            model("Retired", "sd15", enabled=False),
        ],
        [
            lora(
                "Neon City",
                "sd15",
                trigger_words=("neonpunk",),
                sha256="ab" * 32,
                default_weight=0.8,
                recommended_min=0.4,
                recommended_max=1.0,
            ),
            lora("Detail Tweaker", "sd15"),
            lora("Film Grain", "sd15", trigger_words=("grainy", "35mm")),
            lora("Pixel Art", "sd15"),
            lora("XL Sharp", "sdxl"),
            lora("Hidden", "sd15", enabled=False),
            lora("Lewd", "sd15", nsfw=True),
            lora("Slider", "sd15", recommended_min=-1, recommended_max=1),
        ],
    )


def request(prompt: str = "a street at night", **kw: Any) -> Any:
    values: dict[str, Any] = {
        "guild_id": GUILD,
        "channel_id": 1,
        "user_id": 2,
        "channel_is_nsfw": False,
        "prompt": prompt,
        "model": "Dream",
    }
    values.update(kw)
    return build_request(**values)


def codes(result: Validated | Rejected) -> list[str]:
    assert isinstance(result, Rejected), result
    return [p.code for p in result.problems]


def test_valid_request_builds_the_engine_recipe() -> None:
    result = validate(
        request(
            "a street <lora:neon city:.7>",
            slots=[("detail tweaker", "0.5")],
            seed=1234,
            steps=25,
            cfg=6.5,
            sampler="euler A",
            width=512,
            height=768,
            count=2,
        ),
        catalog(),
    )
    assert isinstance(result, Validated)
    r = result.recipe
    assert (r.model, r.model_name, r.seed, r.steps, r.cfg_scale, r.sampler) == (
        "Dream.safetensors",
        "Dream",
        1234,
        25,
        6.5,
        "Euler a",
    )
    assert (r.width, r.height, r.count) == (512, 768, 2)
    assert [(x.name, x.file, x.weight) for x in r.loras] == [
        ("Detail Tweaker", "Detail_Tweaker.safetensors", 0.5),
        ("Neon City", "Neon_City.safetensors", 0.7),
    ]
    assert r.loras[1].sha256 == "ab" * 32
    assert r.negative_prompt == "blurry"  # the model's default negative
    assert r.prompt == "neonpunk, a street"  # first: in the first chunk, never cut
    assert result.added_trigger_words == ("neonpunk",)
    assert [n.code for n in result.notes] == ["trigger_words_added"]
    assert not result.seed_was_random


def test_defaults_and_injected_seed() -> None:
    result = validate(request(slots=[("neon city", None)]), catalog(), new_seed=lambda: 777)
    assert isinstance(result, Validated)
    assert result.recipe.seed == 777 and result.seed_was_random
    assert result.recipe.loras[0].weight == 0.8  # the LoRA's default weight
    assert result.recipe.steps == 20 and result.recipe.width == 512
    assert validate(request(seed=-1), catalog(), new_seed=lambda: 5).recipe.seed == 5  # type: ignore[union-attr]


def test_unknown_names_get_three_suggestions_including_trigger_words() -> None:
    result = validate(
        request(slots=[("neon citty", None), ("grainy", None)], model="dreem"), catalog()
    )
    assert isinstance(result, Rejected)
    by_code = {p.code: p for p in result.problems}
    assert by_code["unknown_model"].suggestions[0] == "Dream"
    unknown = [p for p in result.problems if p.code == "unknown_lora"]
    assert unknown[0].suggestions[0] == "Neon City" and len(unknown[0].suggestions) <= 3
    assert unknown[1].suggestions[0] == "Film Grain"  # found through its trigger word
    assert "Did you mean: `Film Grain`" in result.as_text()


def test_all_problems_reported_at_once() -> None:
    result = validate(
        request(
            "x" * 5000 + " <lora:Neon City:0.7.1> <lora:hidden> <lora:XL Sharp:1>",
            model="Spicy",
            slots=[("Lewd", "2.5"), ("neon city", "1")],
            steps=500,
            cfg=float("nan"),
            width=513,
            height=4096,
            count=9,
            seed=2**40,
        ),
        catalog(),
    )
    assert set(codes(result)) >= {
        "nsfw_model",
        "nsfw_lora",
        "weight_out_of_range",
        "duplicate_lora",
        "too_many_loras",
        "lora_disabled",
        "arch_mismatch",
        "prompt_too_long",
        "steps_out_of_range",
        "cfg_out_of_range",
        "size_not_multiple_of_8",
        "size_out_of_range",
        "count_out_of_range",
        "seed_out_of_range",
    }
    assert all(p.message and p.fix for p in result.problems)  # type: ignore[union-attr]


def test_arch_mismatch_names_both_and_suggests_fitting_loras() -> None:
    result = validate(request(slots=[("XL Sharp", None)]), catalog())
    problem = result.problems[0]  # type: ignore[union-attr]
    assert problem.code == "arch_mismatch"
    assert "trained for SDXL" in problem.message and "is SD 1.5" in problem.message
    assert "made for SD 1.5" in problem.fix
    assert all(catalog().lora(s).architecture == "sd15" for s in problem.suggestions)  # type: ignore[union-attr]


def test_a_bad_weight_on_an_unknown_lora_is_reported_with_it() -> None:
    result = validate(request(slots=[("Detial Tweaker", "0.7.1")]), catalog())
    assert sorted(codes(result)) == ["bad_weight", "unknown_lora"]


@pytest.mark.parametrize("weight", ["NaN", "inf", "1e400", "0.7.1", ""])
def test_bad_weights(weight: str) -> None:
    result = validate(request(slots=[("Detail Tweaker", weight)]), catalog())
    assert codes(result) == ["bad_weight"]


def test_weight_range_negative_and_recommended() -> None:
    assert codes(validate(request(slots=[("Slider", "-0.5")]), catalog())) == [
        "weight_out_of_range"
    ]
    problem = validate(request(slots=[("Slider", "-0.5")]), catalog()).problems[0]  # type: ignore[union-attr]
    assert "Negative weights need an admin" in problem.message
    allowed = validate(request(slots=[("Slider", "-0.5")]), catalog(weight_min=-2.0))
    assert isinstance(allowed, Validated) and allowed.recipe.loras[0].weight == -0.5
    warned = validate(request("neonpunk", slots=[("Neon City", "1.5")]), catalog())
    assert isinstance(warned, Validated)
    assert [n.code for n in warned.notes] == ["weight_above_recommended"]
    assert codes(validate(request(slots=[("Neon City", "2.01")]), catalog())) == [
        "weight_out_of_range"
    ]


def test_stack_cap_with_role_override_and_duplicates() -> None:
    four = [("Detail Tweaker", None), ("Pixel Art", None), ("Slider", None)]
    req = request("35mm grainy <lora:Film Grain:0.5>", slots=four)
    assert codes(validate(req, catalog())) == ["too_many_loras"]
    vip = request("35mm grainy <lora:Film Grain:0.5>", slots=four, user_role_ids=[ROLE_VIP])
    assert isinstance(validate(vip, catalog(role_max_loras={ROLE_VIP: 4})), Validated)
    dup = validate(
        request("cat <lora:DETAIL tweaker:0.2>", slots=[("Detail Tweaker", None)]), catalog()
    )
    assert codes(dup) == ["duplicate_lora"]
    assert "slot lora1 and inline tag #1" in dup.problems[0].message  # type: ignore[union-attr]


def test_nsfw_policies() -> None:
    req = request(model="Spicy", slots=[("Lewd", None)])
    assert codes(validate(req, catalog())) == ["nsfw_model", "nsfw_lora"]
    in_nsfw_channel = request(model="Spicy", slots=[("Lewd", None)], channel_is_nsfw=True)
    assert isinstance(validate(in_nsfw_channel, catalog()), Validated)
    assert codes(validate(in_nsfw_channel, catalog(nsfw_policy=NsfwPolicy.NEVER))) == [
        "nsfw_model",
        "nsfw_lora",
    ]
    assert isinstance(validate(req, catalog(nsfw_policy=NsfwPolicy.ANYWHERE)), Validated)


def test_model_channel_disabled_and_default() -> None:
    assert codes(validate(request(model="Staff Only"), catalog())) == ["model_not_allowed_here"]
    assert isinstance(validate(request(model="Staff Only", channel_id=99), catalog()), Validated)
    assert codes(validate(request(model="Retired"), catalog())) == ["model_disabled"]
    assert codes(validate(request(model=None), catalog())) == ["no_model"]
    default = validate(request(model=None), catalog(default_model="juggernaut xl"))
    assert isinstance(default, Validated) and default.recipe.width == 1024


def test_sizes_per_architecture() -> None:
    assert codes(validate(request(width=1024, height=1024), catalog())) == [
        "size_wrong_for_architecture"
    ]
    assert codes(validate(request(model="Juggernaut XL", width=512, height=512), catalog())) == [
        "size_wrong_for_architecture"
    ]
    assert isinstance(
        validate(request(model="Juggernaut XL", width=832, height=1216), catalog()), Validated
    )
    assert codes(validate(request(width=500), catalog())) == ["size_not_multiple_of_8"]
    assert "Use 496 or 504" in validate(request(width=500), catalog()).problems[0].fix  # type: ignore[union-attr]
    assert codes(validate(request(width=512, height=512), catalog(size_max=256 + 8))) == [
        "size_out_of_range",
        "size_out_of_range",
    ]


def test_trigger_words_reported_when_not_automatic() -> None:
    result = validate(request(slots=[("Film Grain", None)]), catalog(auto_trigger_words=False))
    assert codes(result) == ["missing_trigger_words"]
    assert "grainy, 35mm" in result.problems[0].message  # type: ignore[union-attr]
    present = validate(
        request("GRAINY photo, 35mm", slots=[("Film Grain", None)]),
        catalog(auto_trigger_words=False),
    )
    assert isinstance(present, Validated) and present.added_trigger_words == ()
    inside_words = validate(request("ungrainy 35mmx", slots=[("Film Grain", None)]), catalog())
    assert isinstance(inside_words, Validated)
    assert inside_words.added_trigger_words == ("grainy", "35mm")


def test_prompt_limits_and_invisible_characters() -> None:
    assert codes(validate(request("x" * 101), catalog(prompt_limit=100))) == ["prompt_too_long"]
    assert codes(validate(request("\u200b\u200b"), catalog())) == ["empty_prompt"]
    only_tag = validate(request("<lora:Film Grain:0.5>"), catalog())
    assert isinstance(only_tag, Validated) and only_tag.recipe.prompt == "grainy, 35mm"
    ok = validate(request("ca\u200bt"), catalog())
    assert isinstance(ok, Validated) and ok.recipe.prompt == "cat"
    over = validate(request("y" * 95, slots=[("Film Grain", None)]), catalog(prompt_limit=100))
    assert codes(over) == ["prompt_too_long"]
    assert "trigger words" in over.problems[0].message  # type: ignore[union-attr]


def test_unknown_sampler_and_empty_inline_name() -> None:
    assert codes(validate(request(sampler="Eulerish"), catalog())) == ["unknown_sampler"]
    assert codes(validate(request("cat <lora::1>"), catalog())) == ["empty_lora_name"]
    # weight2 given, lora2 left empty: reported, not silently ignored.
    lone_weight = validate(request(slots=[("Film Grain", "0.5"), (None, "0.8")]), catalog())
    assert codes(lone_weight) == ["empty_lora_name"]
    assert "lora2" in lone_weight.problems[0].message and "weight2" in lone_weight.problems[0].fix  # type: ignore[union-attr]


def test_rejection_text_fits_a_discord_message() -> None:
    many = [(f"missing {i}", None) for i in range(40)]
    text = validate(request(slots=many), catalog(max_loras=16)).as_text()  # type: ignore[union-attr]
    assert len(text) <= 2000


def test_every_sampler_the_validator_accepts_is_one_the_engine_runs() -> None:
    """The validator's names are the shared list, and the engine maps each of them."""
    from engine.samplers import get_sampler

    for name in SAMPLERS:
        checked = validate(request(sampler=name.upper()), catalog())
        assert isinstance(checked, Validated), name
        assert get_sampler(checked.recipe.sampler).name == name


async def test_catalog_is_cached_and_rebuilt_after_writes(registry: Registry) -> None:
    await registry.models.add(GUILD, model("Dream"), ADMIN)
    first = await registry.catalogs.get(GUILD)
    assert await registry.catalogs.get(GUILD) is first
    await registry.loras.record_use(GUILD, ["x"])
    assert await registry.catalogs.get(GUILD) is first
    await registry.loras.add(GUILD, lora("Fresh"), ADMIN)
    second = await registry.catalogs.get(GUILD)
    assert second is not first and second.lora("fresh") is not None
    await registry.settings.update(GUILD, ADMIN, max_loras=1)
    third = await registry.catalogs.get(GUILD)
    assert third.settings.max_loras == 1
    result = validate(request(slots=[("fresh", None)], prompt="<lora:fresh:1> hi"), third)
    assert codes(result) == ["duplicate_lora"]


async def test_catalog_from_rows_with_background_index(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.registry import catalog_cache

    monkeypatch.setattr(catalog_cache, "BACKGROUND_INDEX_THRESHOLD", 1)
    await registry.models.add(GUILD, model("Dream"), ADMIN)
    await registry.loras.add(
        GUILD, lora("Long Story", trigger_words=("saga",), description="d" * 5000), ADMIN
    )
    await registry.loras.add(GUILD, lora("XL Only", "sdxl"), ADMIN)
    cat = await registry.catalogs.get(GUILD)
    entry = cat.lora("long story")
    assert entry is not None and entry.trigger_words == ("saga",) and entry.description == ""
    assert len(cat.loras) == 2 and set(cat.loras) == {"long story", "xl only"}
    assert cat.suggest_loras("sagga") == ["Long Story"]
    assert cat.suggest_loras("xl onl", architecture="sd15") == []
    result = validate(request("<lora:long stroy:1> hi"), cat)
    assert isinstance(result, Rejected) and result.problems[0].suggestions == ("Long Story",)


def test_cfg_bounds_per_architecture() -> None:
    assert isinstance(validate(request(model="Flux Dev"), catalog()), Validated)
    assert codes(validate(request(model="Flux Dev", cfg=12.0), catalog())) == [
        "cfg_wrong_for_architecture"
    ]
    assert isinstance(validate(request(model="Dream", cfg=12.0), catalog()), Validated)
    assert codes(validate(request(model="Dream", cfg=25.0), catalog())) == ["cfg_out_of_range"]


def test_size_multiple_comes_from_the_architecture() -> None:
    """FLUX packs 2x2 latent patches: sides in multiples of 16; SD's stay multiples of 8."""
    assert isinstance(validate(request(model="Juggernaut XL", width=1000, height=1024), catalog()), Validated)
    result = validate(request(model="Flux Dev", width=1000, height=1024), catalog())
    assert codes(result) == ["size_not_multiple_of_16"]
    assert isinstance(result, Rejected) and "Use 992 or 1008." in result.as_text()
    assert codes(validate(request(model="Dream", width=500), catalog())) == ["size_not_multiple_of_8"]


def test_settings_a_flux_model_ignores_are_noted_or_refused() -> None:
    """A negative prompt on FLUX is not used: the member is told, not silently ignored; clip skip
    (CLIP-only) and an SD sampler are refused with the reason."""
    result = validate(request(model="Flux Dev", negative_prompt="blurry"), catalog())
    assert isinstance(result, Validated)
    assert [n.code for n in result.notes] == ["negative_ignored"]
    plain = validate(request(model="Dream", negative_prompt="blurry"), catalog())
    assert isinstance(plain, Validated) and plain.notes == ()
    assert codes(validate(request(model="Flux Dev", clip_skip=2), catalog())) == ["clip_skip_unsupported"]
    assert codes(validate(request(model="Flux Dev", sampler="DPM++ 2M Karras"), catalog())) == [
        "sampler_wrong_for_architecture"
    ]
    assert isinstance(validate(request(model="Flux Dev", sampler="euler"), catalog()), Validated)


def test_clip_skip_notes_follow_the_architecture() -> None:
    result = validate(request(model="Juggernaut XL", clip_skip=3, width=1024, height=1024), catalog())
    assert isinstance(result, Validated)
    assert [(n.code, n.message) for n in result.notes] == [
        (
            "clip_skip_sdxl",
            "Clip skip 3 has no effect on SDXL: SDXL models always read the penultimate layer "
            "(what “clip skip 2” means for Pony), as in A1111.",
        )
    ]
    plain = validate(request(model="Dream", clip_skip=3), catalog())
    assert isinstance(plain, Validated) and plain.notes == ()
