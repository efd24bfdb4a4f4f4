"""A1111 sampler names on diffusers schedulers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, Recipe
from engine.recipe import sampler_names
from engine.samplers import (
    SAMPLER_BY_NAME,
    SAMPLERS,
    Sampler,
    a1111_base_name,
    check_covers,
    get_sampler,
    make_scheduler,
    schedule_type,
)
from tests.engine._images import pixels

RECIPE = Recipe(
    model="sd15-tiny.safetensors", prompt="a castle", steps=4, width=64, height=64, seed=5
)


#: A1111 name -> (diffusers class, Karras sigmas, DPM algorithm), written out from the A1111 to
#: diffusers table in /work/shared/reference.md rather than read back from engine.samplers.
EXPECTED = {
    "Euler": ("EulerDiscreteScheduler", False, None),
    "Euler a": ("EulerAncestralDiscreteScheduler", False, None),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", False, "dpmsolver++"),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", True, "dpmsolver++"),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", False, "dpmsolver++"),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", False, "sde-dpmsolver++"),
    "Heun": ("HeunDiscreteScheduler", False, None),
    "LMS": ("LMSDiscreteScheduler", False, None),
    "DDIM": ("DDIMScheduler", False, None),
    "UniPC": ("UniPCMultistepScheduler", False, None),
}


def test_names_users_know_are_all_there() -> None:
    assert set(EXPECTED) <= set(SAMPLERS)


def test_the_engine_maps_exactly_the_shared_names_the_bot_offers() -> None:
    """One list (torch-free, the bot's too); the engine's scheduler table is checked against it."""
    assert SAMPLERS is sampler_names.SAMPLERS
    assert tuple(SAMPLER_BY_NAME) == sampler_names.SAMPLERS
    table = tuple(SAMPLER_BY_NAME.values())
    with pytest.raises(RuntimeError, match=r"no scheduler for \['Restart'\]"):
        check_covers(table, (*sampler_names.SAMPLERS, "Restart"))
    with pytest.raises(RuntimeError, match=r"not in the shared list \['DDIM'\]"):
        check_covers(table, tuple(n for n in sampler_names.SAMPLERS if n != "DDIM"))
    with pytest.raises(RuntimeError):
        check_covers((*table, Sampler("Euler", "EulerDiscreteScheduler")), sampler_names.SAMPLERS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_a1111_name_builds_its_diffusers_scheduler(
    tiny_generator: Generator, name: str
) -> None:
    tiny_generator.run(dataclasses.replace(RECIPE, steps=1))
    scheduler = make_scheduler(name, tiny_generator.current.base_scheduler_config)
    cls, karras, algorithm = EXPECTED[name]
    assert type(scheduler).__name__ == cls
    assert scheduler.config.get("use_karras_sigmas", False) is karras
    assert scheduler.config.get("algorithm_type") == algorithm


def test_unknown_sampler_lists_the_valid_ones() -> None:
    with pytest.raises(EngineError) as caught:
        get_sampler("DPM++ 3M")
    assert caught.value.code is ErrorCode.INVALID_RECIPE
    assert all(name in caught.value.message for name in SAMPLERS)


def test_schedule_type_and_a1111_names() -> None:
    assert (
        schedule_type("DPM++ 2M Karras") == "Karras"
        and a1111_base_name("DPM++ 2M Karras") == "DPM++ 2M"
    )
    assert schedule_type("Euler a") == "Automatic" and a1111_base_name("Euler a") == "Euler a"


def test_schedulers_keep_the_model_training_schedule(tiny_generator: Generator) -> None:
    tiny_generator.run(dataclasses.replace(RECIPE, steps=1))
    base = tiny_generator.current.base_scheduler_config
    for name in SAMPLERS:
        scheduler = make_scheduler(name, base)
        assert type(scheduler).__name__ == get_sampler(name).scheduler
        assert scheduler.config.beta_schedule == base.beta_schedule == "scaled_linear"
        assert scheduler.config.get("use_karras_sigmas", False) == (schedule_type(name) == "Karras")
    assert make_scheduler("DPM++ 2M SDE", base).config.algorithm_type == "sde-dpmsolver++"


@pytest.mark.parametrize(
    "sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "LMS Karras"]
)
def test_every_sampler_is_deterministic_per_seed(tiny_generator: Generator, sampler: str) -> None:
    recipe = dataclasses.replace(RECIPE, sampler=sampler)
    steps: list[tuple[int, int]] = []
    first = tiny_generator.run(recipe, on_step=lambda done, total: steps.append((done, total))).images[0]
    assert steps == [(i, recipe.steps) for i in range(1, recipe.steps + 1)]  # Heun too (2 evals/step)
    assert tiny_generator.run(recipe).images[0] == first
    other = tiny_generator.run(dataclasses.replace(recipe, seed=6)).images[0]
    assert not np.array_equal(pixels(first), pixels(other))


def test_a_sampler_name_means_the_same_whatever_the_model_config_says(
    tiny_generator: Generator,
) -> None:
    """A model shipping a Karras + SDE + third-order config must not change what "DPM++ 2M" runs."""
    from diffusers import DPMSolverMultistepScheduler

    tiny_generator.run(dataclasses.replace(RECIPE, steps=1))
    shipped = DPMSolverMultistepScheduler.from_config(
        tiny_generator.current.base_scheduler_config,
        use_karras_sigmas=True,
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
    ).config
    plain = make_scheduler("DPM++ 2M", shipped).config
    assert (plain.use_karras_sigmas, plain.algorithm_type, plain.solver_order) == (
        False,
        "dpmsolver++",
        2,
    )
    karras = make_scheduler("DPM++ 2M Karras", shipped).config
    assert (karras.use_karras_sigmas, karras.algorithm_type) == (True, "dpmsolver++")
    for name in ("Euler", "Heun", "UniPC", "DPM++ SDE"):
        assert make_scheduler(name, shipped).config.use_karras_sigmas is False, name
