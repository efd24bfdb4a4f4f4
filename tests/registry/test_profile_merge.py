"""Validation merges sampling profiles (issue 21): model defaults, then the stack's profile,
then the member's options; every warning and refusal."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from bot.registry import Catalog, ServerSettings
from bot.request.parse import build_request
from bot.request.validation import Rejected, Validated, validate

from .conftest import GUILD, lora, model


def catalog(**settings: Any) -> Catalog:
    return Catalog(
        GUILD,
        ServerSettings(**settings),
        [
            model("XL", "sdxl", default_steps=30, default_cfg=7.0, default_sampler="DPM++ 2M Karras"),
            model("Dream", "sd15"),
            model("Dev", "flux", variant="dev", default_width=1024, default_height=1024, default_cfg=3.5,
                  default_steps=28, default_sampler="Euler"),
            model("Schnell", "flux", variant="schnell", default_width=1024, default_height=1024, default_cfg=1.0,
                  default_steps=4, default_sampler="Euler", speed_profile="flux-schnell"),
        ],  # fmt: skip
        [
            lora("Lightning", "sdxl", speed_profile="sdxl-lightning-4step"),
            lora("TCD", "sdxl", speed_profile="tcd-sdxl"),
            lora("Hyper CFG", "sdxl", speed_profile="hyper-sdxl-8steps-cfg"),
            lora("Hyper Flux", "flux", variant="dev", speed_profile="hyper-flux-dev-8steps", default_weight=0.125),
            lora("Style", "sdxl"),
        ],
    )


def run(*slots: tuple[str, str | None], model_name: str = "XL", **kw: Any) -> Validated | Rejected:
    values: dict[str, Any] = {"guild_id": GUILD, "channel_id": 1, "user_id": 2, "channel_is_nsfw": False,
                              "prompt": "a fox", "model": model_name, "slots": list(slots), "seed": 1}  # fmt: skip
    values.update(kw)
    return validate(build_request(**values), catalog())


def notes(result: Validated | Rejected) -> dict[str, str]:
    assert isinstance(result, Validated), result
    return {n.code: n.message for n in result.notes}


def test_without_a_speed_lora_nothing_changes() -> None:
    result = run(("Style", None))
    assert isinstance(result, Validated)
    recipe = result.recipe
    assert (recipe.sampler, recipe.steps, recipe.cfg_scale, recipe.eta) == ("DPM++ 2M Karras", 30, 7.0, None)
    assert result.profile is None and "profile" not in notes(result)


def test_the_stack_profile_replaces_the_model_defaults() -> None:
    result = run(("Lightning", None), ("Style", "0.6"))
    assert isinstance(result, Validated)
    recipe = result.recipe
    assert (recipe.sampler, recipe.steps, recipe.cfg_scale) == ("Euler SGM Uniform", 4, 1.0)
    assert result.profile == "sdxl-lightning-4step"
    said = notes(result)
    assert said["profile"] == ("Sampling profile SDXL-Lightning 4-step (from `Lightning`): "
                               "Euler SGM Uniform, 4 steps, CFG 1.")  # fmt: skip
    assert not {"profile_steps", "profile_cfg", "profile_sampler"} & set(said)


def test_tcd_records_its_eta() -> None:
    result = run(("TCD", None))
    assert isinstance(result, Validated)
    assert (result.recipe.sampler, result.recipe.steps, result.recipe.eta) == ("TCD", 4, 0.3)
    # Steps inside the profile's range are the member's to choose, without a warning.
    chosen = run(("TCD", None), steps=8)
    assert isinstance(chosen, Validated) and chosen.recipe.steps == 8 and "profile_steps" not in notes(chosen)


def test_explicit_options_win_with_a_one_line_warning() -> None:
    result = run(("Lightning", None), steps=30, cfg=7.0, sampler="DPM++ 2M Karras")
    assert isinstance(result, Validated)
    recipe = result.recipe
    assert (recipe.sampler, recipe.steps, recipe.cfg_scale) == ("DPM++ 2M Karras", 30, 7.0)
    said = notes(result)
    assert said["profile_steps"] == "`Lightning` (SDXL-Lightning 4-step) wants 4 steps; running your 30."
    assert said["profile_cfg"] == "`Lightning` (SDXL-Lightning 4-step) wants CFG 0 to 1; running your 7."
    assert said["profile_sampler"] == ("`Lightning` (SDXL-Lightning 4-step) wants the sampler Euler SGM Uniform; "
                                       "running your DPM++ 2M Karras.")  # fmt: skip
    assert all("\n" not in message for message in said.values())
    # A CFG-preserving profile takes the member's CFG inside its range silently.
    hyper = run(("Hyper CFG", None), cfg=6.0)
    assert isinstance(hyper, Validated) and hyper.recipe.cfg_scale == 6.0 and "profile_cfg" not in notes(hyper)
    assert run(("Hyper CFG", None)).recipe.cfg_scale == 5.0  # type: ignore[union-attr]


def test_the_recommended_lora_weight_is_the_default_and_another_is_warned() -> None:
    default = run(("Hyper Flux", None), model_name="Dev")
    assert isinstance(default, Validated)
    assert default.recipe.loras[0].weight == 0.125 and "profile_weight" not in notes(default)
    assert (default.recipe.steps, default.recipe.cfg_scale, default.recipe.sampler) == (8, 3.5, "Euler")
    heavy = run(("Hyper Flux", "1"), model_name="Dev")
    assert notes(heavy)["profile_weight"] == "`Hyper Flux` (Hyper-FLUX.1-dev 8-step) wants weight 0.125; running your 1."


def test_two_speed_loras_are_refused_with_the_reason() -> None:
    result = run(("Lightning", None), ("TCD", None))
    assert isinstance(result, Rejected)
    (problem,) = [p for p in result.problems if p.code == "two_speed_loras"]
    assert "`Lightning` (SDXL-Lightning 4-step), `TCD` (TCD (SDXL))" in problem.message
    assert problem.fix == "Keep one of them."


def test_a_profile_the_model_cannot_run_is_refused_with_the_reason() -> None:
    result = run(("Hyper Flux", None), model_name="Schnell")
    assert isinstance(result, Rejected)
    problem = next(p for p in result.problems if p.code == "profile_cannot_run")
    assert "made for the dev / krea variant, not schnell" in problem.message


def test_a_distilled_checkpoints_own_profile_applies_without_a_lora() -> None:
    result = run(model_name="Schnell")
    assert isinstance(result, Validated)
    assert result.profile == "flux-schnell" and (result.recipe.steps, result.recipe.sampler) == (4, "Euler")
    # Its CFG is not the member's, so the "CFG not used" note is not given for it.
    assert "cfg_ignored" not in notes(result)


def test_merging_and_validating_is_fast() -> None:
    """The issue's target: under 1 ms for merge + validate (tests.bench.speed measures it too)."""
    data = catalog()
    request = build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, prompt="a fox",
                            model="XL", slots=[("Lightning", None)], seed=1)  # fmt: skip
    validate(request, data)
    started = time.perf_counter()
    for _ in range(50):
        validate(request, data)
    assert (time.perf_counter() - started) / 50 < 0.005  # generous on a loaded 2-core machine


def fast_catalog(fast_mode: bool) -> Catalog:
    base = catalog(fast_mode=fast_mode)
    models = [dataclasses.replace(m, fast_with={"XL": "Lightning", "Dev": "Schnell"}.get(m.name))
              for m in base.models.values()]  # fmt: skip
    return Catalog(GUILD, base.settings, models, [base.lora(n) for n in ("Lightning", "TCD", "Style", "Hyper Flux")])  # type: ignore[misc]


def fast(data: Catalog, model_name: str = "XL", **kw: Any) -> Validated | Rejected:
    values: dict[str, Any] = {"guild_id": GUILD, "channel_id": 1, "user_id": 2, "channel_is_nsfw": False,
                              "prompt": "a fox", "model": model_name, "seed": 1}  # fmt: skip
    values.update(kw)
    return validate(build_request(**values), data)


def test_speed_fast_adds_the_models_speed_lora_and_its_profile() -> None:
    from bot.jobs.speed import SpeedBook

    off = fast_catalog(False)
    normal = fast(off)
    assert isinstance(normal, Validated) and normal.recipe.loras == () and normal.recipe.steps == 30
    quick = fast(off, speed="fast")
    assert isinstance(quick, Validated)
    assert [lo.name for lo in quick.recipe.loras] == ["Lightning"]
    assert (quick.recipe.steps, quick.recipe.sampler, quick.recipe.cfg_scale) == (4, "Euler SGM Uniform", 1.0)
    assert notes(quick)["fast"] == "Fast mode: added `Lightning`."
    # ETAs and scheduling weights see the shorter job: its work is 4/30 of the default's.
    book = SpeedBook()
    assert book.estimate(quick.recipe) / book.estimate(normal.recipe) == pytest.approx(4 / 30)


def test_server_fast_mode_applies_unless_the_member_asks_for_normal() -> None:
    on = fast_catalog(True)
    quick = fast(on)
    assert isinstance(quick, Validated) and quick.recipe.steps == 4 and quick.profile == "sdxl-lightning-4step"
    normal = fast(on, speed="normal")
    assert isinstance(normal, Validated) and normal.recipe.loras == () and normal.recipe.steps == 30
    # A member's own speed LoRA is kept, not doubled.
    own = fast(on, slots=[("TCD", None)])
    assert isinstance(own, Validated) and [lo.name for lo in own.recipe.loras] == ["TCD"]
    # FLUX dev's fast setting is the schnell model: the model is swapped, its profile applies.
    flux = fast(on, model_name="Dev")
    assert isinstance(flux, Validated)
    assert (flux.recipe.model_name, flux.recipe.steps, flux.profile) == ("Schnell", 4, "flux-schnell")
    assert notes(flux)["fast"] == "Fast mode: running `Schnell` instead of `Dev`."
    # A full stack is not pushed over the server's cap: fast mode steps aside, and says so.
    three = validate(build_request(guild_id=GUILD, channel_id=1, user_id=2, channel_is_nsfw=False, prompt="a fox",
                                   model="XL", seed=1, slots=[("Style", None)]),
                     Catalog(GUILD, dataclasses.replace(on.settings, max_loras=1), list(on.models.values()),
                             [on.lora("Lightning"), on.lora("Style")]))  # type: ignore[list-item]  # fmt: skip
    assert isinstance(three, Validated) and [lo.name for lo in three.recipe.loras] == ["Style"]
    assert "stack is full" in notes(three)["fast_unset"]
    # A model without a fast setting runs as usual; a member who asked is told.
    plain = fast(fast_catalog(False), model_name="Dream", speed="fast")
    assert isinstance(plain, Validated) and plain.recipe.steps == 20 and "no fast setting" in notes(plain)["fast_unset"]
